"""LoRA adapters in the simulator, as vLLM's OpenAI server handles them (pure; no I/O).

What it imitates (vLLM 0.32, ``entrypoints/openai/models/serving.py`` and the LoRA worker manager):

* ``--enable-lora`` turns LoRA on; ``--max-loras`` (default 1) adapters fit in one batch,
  ``--max-lora-rank`` (default 16) is the largest rank an adapter may have, ``--max-cpu-loras``
  (default: ``--max-loras``; must not be smaller) adapters are cached in host memory.
* With ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` true (``1`` or ``true``), ``POST /v1/load_lora_adapter``
  ``{"lora_name", "lora_path", "load_inplace"?}`` and ``POST /v1/unload_lora_adapter {"lora_name"}``
  exist (else they are not routes at all: 404). Success is HTTP 200 with a plain-text body
  (``Success: LoRA adapter 'x' added successfully.``); errors are the OpenAI error object, with vLLM's
  messages, types and codes (``load_error`` / ``unload_error``).
* A loaded adapter is listed in ``/v1/models`` after the base model, ``root`` its path and ``parent``
  the base's served name; a request whose ``model`` is its name is served by it.
* ``vllm:lora_requests_info{max_lora, waiting_lora_adapters, running_lora_adapters}``: a gauge whose
  value is the time of the engine's last stats update and whose labels carry the adapters of the
  waiting and running requests (comma-separated). Like vLLM's, a series per label set ever seen
  stays: readers take the one with the latest value.

What an adapter is, the simulator cannot read from a path it cannot open: its rank, whether it
exists and how well it answers come from the behaviours map (``sim/quality.py``) under the adapter's
path or name (``lora_rank``, ``lora_missing``, ``accuracy``...); an adapter the map does not name has
rank 8, exists, and answers like the default behaviour. Its quality identity (``checkpoint``) is its
path, so two revisions at two paths answer differently.

Not modelled: the GPU slot limit (vLLM schedules at most ``max_loras`` distinct adapters per batch;
the simulated engine admits requests regardless of their adapter) and the host-memory LRU of
``max_cpu_loras`` (an evicted adapter is reloaded on its next request in vLLM; here it is always warm).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: vLLM's defaults (``LoRAConfig``).
DEFAULT_MAX_LORAS = 1
DEFAULT_MAX_LORA_RANK = 16
#: The rank of a simulated adapter the behaviours map says nothing about.
DEFAULT_ADAPTER_RANK = 8
#: The environment switch of vLLM's runtime loading endpoints.
ENV_RUNTIME_UPDATING = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"


def runtime_updating_allowed(env: Mapping[str, str]) -> bool:
    """vLLM's reading of ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` (``envs.py``): ``1`` or ``true``, any case."""
    return env.get(ENV_RUNTIME_UPDATING, "0").strip().lower() in ("1", "true")


@dataclass(frozen=True)
class LoRAError(Exception):
    """An error answer of vLLM's LoRA endpoints: HTTP status, OpenAI error type, message."""

    status: int
    kind: str
    message: str


@dataclass(frozen=True)
class Adapter:
    """One loaded adapter."""

    name: str
    path: str
    int_id: int
    rank: int


@dataclass
class LoRARegistry:
    """The adapters one replica has loaded (vLLM's ``OpenAIServingModels.lora_requests``)."""

    enabled: bool
    max_loras: int = DEFAULT_MAX_LORAS
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK
    max_cpu_loras: int | None = None
    adapters: dict[str, Adapter] = field(default_factory=dict)
    _next_id: int = 0

    def load(self, body: Mapping[str, Any], *, rank: int, missing: bool) -> str:
        """Load ``body["lora_path"]`` as ``body["lora_name"]``; the success text, or ``LoRAError``.

        ``rank`` and ``missing``: what the simulator knows of the adapter at that path.
        """
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not isinstance(path, str) or not name or not path:
            raise LoRAError(400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.")
        in_place = body.get("load_inplace") is True
        if name in self.adapters and not in_place:
            raise LoRAError(400, "InvalidUserInput",
                            f"The lora adapter '{name}' has already been loaded. If you want to load the "
                            "adapter in place, set 'load_inplace' to True.")
        if not self.enabled:
            raise LoRAError(500, "InternalServerError",
                            "LoRA is not enabled. Use --enable-lora to enable LoRA.")
        if missing:
            raise LoRAError(404, "NotFoundError", f"Loading lora {name} failed: No adapter found for {path}")
        if rank > self.max_lora_rank:
            raise LoRAError(500, "InternalServerError",
                            f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}.")
        if name in self.adapters:
            int_id = self.adapters[name].int_id
        else:
            self._next_id += 1
            int_id = self._next_id
        self.adapters[name] = Adapter(name=name, path=path, int_id=int_id, rank=rank)
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, body: Mapping[str, Any]) -> str:
        """Unload ``body["lora_name"]``; the success text, or ``LoRAError``."""
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            raise LoRAError(400, "InvalidUserInput",
                            "'lora_name' needs to be provided to unload a LoRA adapter.")
        if name not in self.adapters:
            raise LoRAError(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
        del self.adapters[name]
        return f"Success: LoRA adapter '{name}' removed successfully."

    def model_cards(self, *, base_name: str, created: int) -> list[dict[str, Any]]:
        """The ``/v1/models`` cards of the loaded adapters, in load order, as vLLM lists them."""
        return [{"id": a.name, "object": "model", "created": created, "owned_by": "vllm", "root": a.path,
                 "parent": base_name, "max_model_len": None, "permission": [permission(created)]}
                for a in self.adapters.values()]


def permission(created: int, *, ident: str = "modelperm-sim") -> dict[str, Any]:
    """vLLM's ``ModelPermission`` object (its defaults)."""
    return {"id": ident, "object": "model_permission", "created": created, "allow_create_engine": False,
            "allow_sampling": True, "allow_logprobs": True, "allow_search_indices": False,
            "allow_view": True, "allow_fine_tuning": False, "organization": "*", "group": None,
            "is_blocking": False}


def lora_info_labels(*, max_loras: int, waiting: list[str], running: list[str]) -> tuple[str, str, str]:
    """The ``vllm:lora_requests_info`` labels (max_lora, waiting_lora_adapters, running_lora_adapters).

    vLLM joins the adapter names of the scheduler's waiting and running requests with commas, each
    name once, in the order first seen.
    """
    return str(max_loras), ",".join(dict.fromkeys(waiting)), ",".join(dict.fromkeys(running))
