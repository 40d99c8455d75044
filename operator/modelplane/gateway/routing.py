"""From a request to the ModelDeployment that serves it (pure).

The body is parsed once (``json.loads``), only to read: ``model`` (which ModelDeployment),
``stream`` (whether time to first token can be measured), ``user`` (a session key for sticky
canary assignment, when the session header is absent) and, with prefix affinity on, the prompt's
leading text. The bytes forwarded to the model server are the client's, unchanged.

The prompt's prefix is the first ``prefix_chars`` characters of the prompt as the model server
sees it in order — each chat message's role and text, a completion's prompt, an embedding's
input — and only a prompt at least that long has one: like vLLM's prefix cache, which keeps only
full blocks, a shorter prompt shares nothing worth routing for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelplane.gateway.errors import ErrorKind, GatewayError
from modelplane.gateway.table import Backend, RouteTable

#: The OpenAI paths the gateway forwards, each to the same path on the chosen replica.
INFERENCE_PATHS: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
#: The header whose value keeps a client's requests on one side of a canary split.
SESSION_HEADER = "x-session-id"
#: Longest session key used (longer ones are cut: they only seed a hash).
MAX_SESSION_CHARS = 256


@dataclass(frozen=True)
class RequestInfo:
    """What the gateway reads of a request's body and headers."""

    model: str
    stream: bool = False
    session: str | None = None  #: the session header, else the body's ``user``; None: anonymous
    prefix: str | None = None  #: the prompt's leading text (prefix affinity on, prompt long enough)


def parse_request(body: bytes, headers: Mapping[str, str], *, max_bytes: int,
                  session_header: str = SESSION_HEADER, prefix_chars: int = 0) -> RequestInfo:
    """The model, stream flag, session key and prompt prefix (``prefix_chars`` > 0) of a request.

    Raises ``GatewayError`` (400, 413).
    """
    if len(body) > max_bytes:
        raise GatewayError(ErrorKind.TOO_LARGE, f"the request body is {len(body)} bytes; this gateway "
                                                f"accepts at most {max_bytes}")
    try:
        doc: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise GatewayError(ErrorKind.BAD_REQUEST, f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise GatewayError(ErrorKind.BAD_REQUEST,
                           f"the body must be a JSON object, got {type(doc).__name__}")
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(ErrorKind.BAD_REQUEST,
                           "the body has no \"model\": name the model to use (GET /v1/models lists them)",
                           param="model")
    session = headers.get(session_header) or None
    if session is None:
        user = doc.get("user")
        session = user if isinstance(user, str) and user else None
    if session is not None:
        session = session[:MAX_SESSION_CHARS]
    prefix = prompt_prefix(doc, prefix_chars) if prefix_chars > 0 else None
    return RequestInfo(model=model, stream=doc.get("stream") is True, session=session, prefix=prefix)


def prompt_prefix(doc: Mapping[str, Any], chars: int) -> str | None:
    """The first ``chars`` characters of the prompt, or None when it is shorter (or has none)."""
    pieces: list[str] = []
    size = 0

    def add(text: str) -> None:
        nonlocal size
        if size < chars:
            pieces.append(text[:chars - size])
            size += len(pieces[-1])

    messages = doc.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                add(f"{message.get('role')}\x1f")
                content = message.get("content")
                for part in content if isinstance(content, list) else [content]:
                    if isinstance(part, dict):  # {"type": "text", "text": …}, or an image by its URL
                        part = part.get("text") or str(part.get("image_url") or part.get("type") or "")
                    if isinstance(part, str):
                        add(part)
                add("\x1e")
            if size >= chars:
                break
    else:
        prompt = doc.get("prompt", doc.get("input"))
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            prompt = prompt[0]  # a batch: its first prompt
        if isinstance(prompt, str):
            add(prompt)
        elif isinstance(prompt, list):  # token ids
            for token in prompt:
                add(f"{token},")
                if size >= chars:
                    break
    return "".join(pieces) if size >= chars else None


def resolve(table: RouteTable, model: str) -> Backend:
    """The backend serving ``model``; raises ``GatewayError`` (404) naming what is served."""
    backend = table.get(model)
    if backend is None:
        served = sorted(table.models)
        listing = ", ".join(served[:10]) + (", ..." if len(served) > 10 else "") if served else "none"
        raise GatewayError(ErrorKind.MODEL_NOT_FOUND,
                           f"The model `{model[:200]}` does not exist. Models served: {listing}",
                           param="model")
    return backend


def model_card(backend: Backend) -> dict[str, Any]:
    """One entry of ``/v1/models``: OpenAI's fields, then the ModelDeployment's and its phase.

    An adapter's: ``parent`` its base's served name's ModelDeployment (as vLLM lists an adapter
    under its base), ``model_adapter`` its name, ``ready_replicas`` the replicas holding it."""
    card: dict[str, Any] = {"id": backend.served_name, "object": "model", "created": backend.created,
                            "owned_by": backend.namespace, "phase": backend.phase,
                            "namespace": backend.namespace, "model_deployment": backend.name,
                            "ready_replicas": len({e.address for e in backend.endpoints})}
    if backend.adapter_of is not None:
        card.update(model_deployment=backend.adapter_of, model_adapter=backend.name,
                    parent=backend.adapter_of)
    return card


def models_listing(table: RouteTable) -> dict[str, Any]:
    """``GET /v1/models``: every model served, by name."""
    return {"object": "list", "data": [model_card(table.models[name]) for name in sorted(table.models)]}
