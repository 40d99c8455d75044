"""From a request to the ModelDeployment that serves it (pure).

The body is parsed once (``json.loads``), only to read three fields: ``model`` (which
ModelDeployment), ``stream`` (whether time to first token can be measured), and ``user`` (a
session key for sticky canary assignment, when the session header is absent). The bytes
forwarded to the model server are the client's, unchanged.
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


def parse_request(body: bytes, headers: Mapping[str, str], *, max_bytes: int,
                  session_header: str = SESSION_HEADER) -> RequestInfo:
    """The model, stream flag and session key of a request; raises ``GatewayError`` (400, 413)."""
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
    return RequestInfo(model=model, stream=doc.get("stream") is True, session=session)


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
    """One entry of ``/v1/models``: OpenAI's fields, then the ModelDeployment's and its phase."""
    return {"id": backend.served_name, "object": "model", "created": backend.created,
            "owned_by": backend.namespace, "phase": backend.phase,
            "namespace": backend.namespace, "model_deployment": backend.name,
            "ready_replicas": len(backend.endpoints)}


def models_listing(table: RouteTable) -> dict[str, Any]:
    """``GET /v1/models``: every model served, by name."""
    return {"object": "list", "data": [model_card(table.models[name]) for name in sorted(table.models)]}
