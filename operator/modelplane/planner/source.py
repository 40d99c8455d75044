"""Reading a model's config.json: from the Hugging Face Hub, or from a mounted volume.

The only I/O in the planner. The handler calls ``read_model_arch`` before planning and passes the
result (or the error's message), with the parsed spec, to ``plan_request_from_spec``; on any failure
it plans from hints or the catalog and says why in the plan's reason. Every call has a timeout and a
size limit, and the token never appears in an error message or a log line.

Sources the operator can read here: ``hf://org/name[/subfolder]`` over HTTPS with the
credentialsSecret's token as a Bearer header, and ``pvc://claim/path`` when that claim is mounted
under a local root. ``s3://``, ``gs://`` and ``oci://`` need their own clients and are reported as
``UnsupportedSource`` (the planner falls back to hints and the catalog).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from modelplane.planner.arch import ModelArch, ModelArchError, arch_from_config
from modelplane.planner.catalog import match_model

HF_BASE_URL = "https://huggingface.co"
DEFAULT_TIMEOUT_SECONDS = 10.0
#: config.json files are a few KiB; anything much larger is not one.
MAX_CONFIG_BYTES = 1 << 20


class ConfigReadReason(StrEnum):
    UNAUTHORIZED = "Unauthorized"  #: 401: private or gated repository and no (valid) token
    FORBIDDEN = "Forbidden"  #: 403: the token's user has not been granted access to a gated model
    NOT_FOUND = "NotFound"  #: no such repository, revision or file
    TIMEOUT = "Timeout"
    UNREACHABLE = "Unreachable"  #: connection refused, DNS failure, TLS error
    HTTP_ERROR = "HTTPError"  #: any other non-200 answer
    INVALID_CONFIG = "InvalidConfig"  #: not JSON, too large, or not a model the planner can size
    UNSUPPORTED_SOURCE = "UnsupportedSource"  #: s3://, gs://, oci://: not read by the operator
    NOT_MOUNTED = "NotMounted"  #: pvc:// without a local mount root


class ConfigReadError(Exception):
    """config.json could not be read or understood; ``reason`` is for the condition."""

    def __init__(self, reason: ConfigReadReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


def _split_source(source: str) -> tuple[str, str]:
    if "://" not in source:
        raise ConfigReadError(ConfigReadReason.UNSUPPORTED_SOURCE, f"{source!r} has no scheme")
    scheme, rest = source.split("://", 1)
    return scheme, rest.strip("/")


def hf_config_url(source: str, revision: str = "main", *, base_url: str = HF_BASE_URL) -> str:
    """``{base}/{org}/{name}/resolve/{revision}/[{subfolder}/]config.json`` for an ``hf://`` source."""
    scheme, rest = _split_source(source)
    parts = [p for p in rest.split("/") if p]
    if scheme != "hf" or len(parts) < 2:
        raise ConfigReadError(ConfigReadReason.UNSUPPORTED_SOURCE, f"{source!r} is not hf://org/name")
    repo = "/".join(quote(p, safe="") for p in parts[:2])
    subfolder = "".join(quote(p, safe="") + "/" for p in parts[2:])
    rev = quote(revision or "main", safe="")
    return f"{base_url.rstrip('/')}/{repo}/resolve/{rev}/{subfolder}config.json"


def _parse(raw: bytes, where: str) -> dict[str, Any]:
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigReadError(ConfigReadReason.INVALID_CONFIG,
                              f"{where} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigReadError(ConfigReadReason.INVALID_CONFIG, f"{where} is not JSON: {err}") from None
    if not isinstance(parsed, dict):
        raise ConfigReadError(ConfigReadReason.INVALID_CONFIG, f"{where} is not a JSON object")
    return parsed


_STATUS_REASONS: Mapping[int, tuple[ConfigReadReason, str]] = {
    401: (ConfigReadReason.UNAUTHORIZED, "the repository is private or gated: set credentialsSecret "
                                         "to a Secret whose HF_TOKEN can read it"),
    403: (ConfigReadReason.FORBIDDEN, "the token has no access to this gated model: accept its licence "
                                      "on the Hub with the token's account"),
    404: (ConfigReadReason.NOT_FOUND, "no such repository, revision or config.json"),
}


async def fetch_hf_config(*, source: str, revision: str = "main", token: str | None = None,
                          base_url: str = HF_BASE_URL, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                          session: aiohttp.ClientSession | None = None) -> dict[str, Any]:
    """config.json of an ``hf://`` model from the Hub (or a server at ``base_url``, for tests)."""
    url = hf_config_url(source, revision, base_url=base_url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    own = session is None
    # The Hub is outside the cluster: HTTPS_PROXY/HTTP_PROXY/NO_PROXY apply.
    client = session or aiohttp.ClientSession(trust_env=True)
    try:
        async with client.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout),
                              allow_redirects=True) as response:
            if response.status != 200:
                reason, text = _STATUS_REASONS.get(
                    response.status, (ConfigReadReason.HTTP_ERROR, f"HTTP {response.status}"))
                raise ConfigReadError(reason, f"{source}@{revision}: {text}")
            raw = await response.content.read(MAX_CONFIG_BYTES + 1)
    except TimeoutError:
        raise ConfigReadError(ConfigReadReason.TIMEOUT,
                              f"{source}@{revision}: no config.json within {timeout:g}s") from None
    except aiohttp.ClientError as err:
        # The error names the host, never the request headers, so the token cannot leak here.
        raise ConfigReadError(ConfigReadReason.UNREACHABLE,
                              f"{source}@{revision}: {type(err).__name__}: {err}") from None
    finally:
        if own:
            await client.close()
    return _parse(raw, f"{source}@{revision} config.json")


async def read_local_config(*, source: str, mount_root: Path) -> dict[str, Any]:
    """config.json of a ``pvc://claim/path`` model whose claim is mounted at ``mount_root/claim``."""
    scheme, rest = _split_source(source)
    if scheme != "pvc" or not rest:
        raise ConfigReadError(ConfigReadReason.UNSUPPORTED_SOURCE, f"{source!r} is not pvc://claim/path")
    root = mount_root.resolve()
    path = (root / rest / "config.json").resolve()
    if not path.is_relative_to(root):
        raise ConfigReadError(ConfigReadReason.INVALID_CONFIG, f"{source!r} points outside its volume")

    def read() -> bytes:
        with path.open("rb") as handle:
            return handle.read(MAX_CONFIG_BYTES + 1)

    try:
        raw = await asyncio.to_thread(read)  # never block the event loop on a slow volume
    except FileNotFoundError:
        raise ConfigReadError(ConfigReadReason.NOT_FOUND, f"{source}: no config.json at {path}") from None
    except OSError as err:
        raise ConfigReadError(ConfigReadReason.UNREACHABLE, f"{source}: {err.strerror or err}") from None
    return _parse(raw, f"{source} config.json")


async def read_model_config(*, source: str, revision: str = "main", token: str | None = None,
                            hf_base_url: str = HF_BASE_URL, pvc_root: Path | None = None,
                            timeout: float = DEFAULT_TIMEOUT_SECONDS,
                            session: aiohttp.ClientSession | None = None) -> dict[str, Any]:
    """config.json of any model source the operator can read; ``ConfigReadError`` otherwise."""
    scheme, _ = _split_source(source)
    if scheme == "hf":
        return await fetch_hf_config(source=source, revision=revision, token=token, base_url=hf_base_url,
                                     timeout=timeout, session=session)
    if scheme == "pvc":
        if pvc_root is None:
            raise ConfigReadError(ConfigReadReason.NOT_MOUNTED, f"{source}: the volume is not mounted here")
        return await asyncio.wait_for(read_local_config(source=source, mount_root=pvc_root), timeout)
    raise ConfigReadError(ConfigReadReason.UNSUPPORTED_SOURCE,
                          f"{scheme}:// sources are sized from spec.model.hints or the built-in catalog")


def model_display_name(source: str) -> str:
    """The catalog name when the source matches one, else the last segment of the URI."""
    match = match_model(source)
    if match is not None:
        return match.entry.name
    return source.rstrip("/").rsplit("/", 1)[-1].split(":", 1)[0] or source


async def read_model_arch(*, source: str, revision: str = "main", token: str | None = None,
                          hf_base_url: str = HF_BASE_URL, pvc_root: Path | None = None,
                          timeout: float = DEFAULT_TIMEOUT_SECONDS,
                          session: aiohttp.ClientSession | None = None) -> ModelArch:
    """The model's ``ModelArch`` from its config.json; ``ConfigReadError`` when it cannot be had.

    Parameter counts: the config's own ``num_parameters`` when present; else the catalog's
    published figures when the source names a catalog model and the computed count agrees with them
    within 5% (the published figures include vision towers and other parts the computation leaves
    out); else computed from the architecture.
    """
    config = await read_model_config(source=source, revision=revision, token=token, hf_base_url=hf_base_url,
                                     pvc_root=pvc_root, timeout=timeout, session=session)
    name = model_display_name(source)
    try:
        arch = arch_from_config(config, name=name)
    except ModelArchError as err:
        raise ConfigReadError(ConfigReadReason.INVALID_CONFIG, f"{source}: {err}") from None
    match = match_model(source)
    if match is not None and "num_parameters" not in config:
        published = match.entry.total_params
        if abs(arch.total_params - published) <= 0.05 * published:
            arch = replace(arch, total_params=published,
                           active_params=min(match.entry.active_params, published))
    return arch
