"""What modelplane relies on from vLLM's runtime LoRA endpoints, checked against the server under test.

The operator loads and unloads adapters with ``POST /v1/load_lora_adapter`` and
``/v1/unload_lora_adapter`` and reads the outcome from the status code and the error object; the
gateway reads ``/v1/models`` for the adapters a replica holds and sends ``model: <adapter>`` to it.
Each test states one such reliance; the server runs with ``--enable-lora --max-loras 2
--max-lora-rank 8`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`` (``conftest.py``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conformance.conftest import Target, http_get


def post(target: Target, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{target.url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def load(target: Target, name: str, which: str = "good", **extra: Any) -> tuple[int, bytes]:
    return post(target, "/v1/load_lora_adapter",
                {"lora_name": name, "lora_path": f"{target.lora_dir}/{which}", **extra})


def unload(target: Target, name: str) -> tuple[int, bytes]:
    return post(target, "/v1/unload_lora_adapter", {"lora_name": name})


def error_of(body: bytes) -> dict[str, Any]:
    error = json.loads(body)["error"]
    assert isinstance(error, dict)
    return error


def model_cards(target: Target) -> dict[str, dict[str, Any]]:
    status, body = http_get(f"{target.url}/v1/models")
    assert status == 200
    return {card["id"]: card for card in json.loads(body)["data"]}


def chat(target: Target, model: str) -> tuple[int, bytes]:
    return post(target, "/v1/chat/completions",
                {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})


@pytest.fixture
def name() -> str:
    """A fresh adapter name per test: the server under test lives for the whole session."""
    return f"lora-{uuid.uuid4().hex[:8]}"


def test_load_serve_list_and_unload(target: Target, name: str) -> None:
    status, body = load(target, name)
    assert (status, body.decode()) == (200, f"Success: LoRA adapter '{name}' added successfully.")
    card = model_cards(target)[name]
    assert card["parent"] == target.model
    assert card["root"] == f"{target.lora_dir}/good"
    status, body = chat(target, name)
    assert status == 200
    assert json.loads(body)["model"] == name

    status, body = unload(target, name)
    assert (status, body.decode()) == (200, f"Success: LoRA adapter '{name}' removed successfully.")
    assert name not in model_cards(target)
    status, body = chat(target, name)
    assert status == 404
    # vLLM 0.32 lists the base's served names only, never an adapter's.
    assert error_of(body)["message"] == f"The model `{name}` does not exist. Valid aliases: {target.model}."


def test_loading_a_loaded_name_again_is_refused_unless_in_place(target: Target, name: str) -> None:
    assert load(target, name)[0] == 200
    try:
        status, body = load(target, name)
        assert status == 400
        error = error_of(body)
        assert error["type"] == "InvalidUserInput"
        assert error["message"].startswith(f"The lora adapter '{name}' has already been loaded.")
        assert load(target, name, load_inplace=True)[0] == 200
    finally:
        unload(target, name)


@pytest.mark.parametrize(("which", "status", "kind", "fragment"), [
    ("missing", 404, "NotFoundError", "No adapter found for"),
    ("wide", 500, "InternalServerError", "is greater than max_lora_rank 8"),
], ids=["no-adapter-at-path", "rank-above-max-lora-rank"])
def test_a_failed_load_carries_vllms_message(target: Target, name: str, which: str, status: int, kind: str,
                                             fragment: str) -> None:
    got, body = load(target, name, which)
    assert got == status
    error = error_of(body)
    assert (error["type"], error["code"]) == (kind, status)
    assert fragment in error["message"]
    assert name not in model_cards(target)


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v1/load_lora_adapter", {"lora_name": "", "lora_path": ""}, 400,
     "Both 'lora_name' and 'lora_path' must be provided."),
    ("/v1/unload_lora_adapter", {"lora_name": ""}, 400,
     "'lora_name' needs to be provided to unload a LoRA adapter."),
    ("/v1/unload_lora_adapter", {"lora_name": "never-loaded"}, 404,
     "The lora adapter 'never-loaded' cannot be found."),
], ids=["load-empty-names", "unload-empty-name", "unload-unknown"])
def test_bad_admin_requests_are_refused(target: Target, path: str, body: dict[str, Any], status: int,
                                        message: str) -> None:
    got, answer = post(target, path, body)
    assert got == status
    assert error_of(answer)["message"] == message


def test_lora_requests_info_names_max_loras_and_is_a_recent_timestamp(target: Target, name: str) -> None:
    assert load(target, name)[0] == 200
    try:
        assert chat(target, name)[0] == 200
        status, body = http_get(f"{target.url}/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        samples = families["vllm:lora_requests_info"].samples
        assert samples, "no vllm:lora_requests_info series"
        latest = max(samples, key=lambda s: s.value)
        assert set(latest.labels) == {"max_lora", "waiting_lora_adapters", "running_lora_adapters"}
        assert latest.labels["max_lora"] == "2"
        # The value is the wall time of the engine's last stats update.
        assert abs(latest.value - time.time()) < 600
    finally:
        unload(target, name)
