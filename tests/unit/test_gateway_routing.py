"""The gateway's routing (pure): a request's model and session, the model it names, the errors."""

from __future__ import annotations

import json

import pytest

from modelplane.gateway.errors import STATUS, ErrorKind, GatewayError
from modelplane.gateway.routing import (
    MAX_SESSION_CHARS,
    RequestInfo,
    models_listing,
    parse_request,
    prompt_prefix,
    resolve,
)
from modelplane.gateway.table import Backend, Endpoint, build_table

LIMIT = 1000


@pytest.mark.parametrize(("body", "headers", "expected"), [
    pytest.param(b'{"model": "chat", "messages": []}', {}, RequestInfo("chat"), id="plain"),
    pytest.param(b'{"model": "chat", "stream": true}', {}, RequestInfo("chat", stream=True), id="stream"),
    pytest.param(b'{"model": "chat", "stream": "yes"}', {}, RequestInfo("chat"), id="stream-not-bool"),
    pytest.param(b'{"model": "chat", "user": "ann"}', {}, RequestInfo("chat", session="ann"), id="user"),
    pytest.param(b'{"model": "chat", "user": "ann"}', {"x-session-id": "s1"},
                 RequestInfo("chat", session="s1"), id="header-wins-over-user"),
    pytest.param(b'{"model": "chat", "user": ""}', {}, RequestInfo("chat"), id="empty-user"),
    pytest.param(b'{"model": "chat", "user": 7}', {}, RequestInfo("chat"), id="user-not-string"),
    pytest.param(b'{"model": "org/m:v1"}', {}, RequestInfo("org/m:v1"), id="slash-and-colon"),
    pytest.param(b'  \n{"model": "chat"}\n', {}, RequestInfo("chat"), id="whitespace"),
])
def test_parse_request(body: bytes, headers: dict[str, str], expected: RequestInfo) -> None:
    assert parse_request(body, headers, max_bytes=LIMIT) == expected


def test_a_long_session_key_is_cut() -> None:
    info = parse_request(b'{"model": "m"}', {"x-session-id": "s" * 1000}, max_bytes=LIMIT)
    assert info.session == "s" * MAX_SESSION_CHARS


def test_the_session_header_is_configurable() -> None:
    info = parse_request(b'{"model": "m"}', {"x-user": "u1", "x-session-id": "s"}, max_bytes=LIMIT,
                         session_header="x-user")
    assert info.session == "u1"


@pytest.mark.parametrize(("body", "kind", "says"), [
    pytest.param(b"", ErrorKind.BAD_REQUEST, "not valid JSON", id="empty"),
    pytest.param(b"{model: x}", ErrorKind.BAD_REQUEST, "not valid JSON", id="malformed"),
    pytest.param(b"\xff\xfe", ErrorKind.BAD_REQUEST, "not valid JSON", id="not-utf8"),
    pytest.param(b'["model"]', ErrorKind.BAD_REQUEST, "must be a JSON object, got list", id="array"),
    pytest.param(b'{"messages": []}', ErrorKind.BAD_REQUEST, 'no "model"', id="no-model"),
    pytest.param(b'{"model": ""}', ErrorKind.BAD_REQUEST, 'no "model"', id="empty-model"),
    pytest.param(b'{"model": 3}', ErrorKind.BAD_REQUEST, 'no "model"', id="model-not-string"),
    pytest.param(b'{"model": null}', ErrorKind.BAD_REQUEST, 'no "model"', id="model-null"),
    pytest.param(b'{"model": "m", "x": "' + b"a" * LIMIT + b'"}', ErrorKind.TOO_LARGE,
                 f"at most {LIMIT}", id="too-large"),
])
def test_parse_request_refuses(body: bytes, kind: ErrorKind, says: str) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_request(body, {}, max_bytes=LIMIT)
    assert caught.value.kind is kind
    assert says in caught.value.message


def _table(*names: str) -> dict[str, Backend]:
    backends = [Backend(namespace="ns", name=n.replace("/", "-"), served_name=n, phase="Ready",
                        endpoints=(Endpoint("10.0.0.1:8000"),)) for n in names]
    return dict(build_table(backends).models)


def test_resolve_finds_the_backend_by_served_name() -> None:
    table = build_table(_table("chat", "code").values())
    assert resolve(table, "code").name == "code"


def test_resolve_refuses_an_unknown_model_naming_those_served() -> None:
    table = build_table(_table("chat", "code").values())
    with pytest.raises(GatewayError) as caught:
        resolve(table, "gpt-4")
    assert caught.value.kind is ErrorKind.MODEL_NOT_FOUND
    assert caught.value.status == 404
    assert caught.value.message == "The model `gpt-4` does not exist. Models served: chat, code"
    assert caught.value.param == "model"


def test_resolve_with_nothing_served_says_so() -> None:
    with pytest.raises(GatewayError, match="Models served: none"):
        resolve(build_table([]), "chat")


def test_models_listing_lists_every_model_with_its_phase() -> None:
    table = build_table([
        Backend(namespace="a", name="z", served_name="zeta", phase="ScaledToZero", created=5),
        Backend(namespace="b", name="c", served_name="chat", phase="Ready", created=7,
                endpoints=(Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000"))),
    ])
    assert models_listing(table) == {"object": "list", "data": [
        {"id": "chat", "object": "model", "created": 7, "owned_by": "b", "phase": "Ready",
         "namespace": "b", "model_deployment": "c", "ready_replicas": 2},
        {"id": "zeta", "object": "model", "created": 5, "owned_by": "a", "phase": "ScaledToZero",
         "namespace": "a", "model_deployment": "z", "ready_replicas": 0},
    ]}


@pytest.mark.parametrize(("kind", "status", "error_type"), [
    (ErrorKind.BAD_REQUEST, 400, "invalid_request_error"),
    (ErrorKind.NOT_FOUND, 404, "invalid_request_error"),
    (ErrorKind.MODEL_NOT_FOUND, 404, "invalid_request_error"),
    (ErrorKind.METHOD_NOT_ALLOWED, 405, "invalid_request_error"),
    (ErrorKind.TOO_LARGE, 413, "invalid_request_error"),
    (ErrorKind.OVERLOADED, 429, "rate_limit_error"),
    (ErrorKind.STARTING, 503, "server_error"),
    (ErrorKind.NO_READY_REPLICA, 503, "server_error"),
    (ErrorKind.UPSTREAM_UNREACHABLE, 502, "server_error"),
    (ErrorKind.UPSTREAM_FAILED, 502, "server_error"),
])
def test_error_statuses_and_bodies(kind: ErrorKind, status: int, error_type: str) -> None:
    err = GatewayError(kind, "why", param="model", retry_after=3)
    assert err.status == status
    assert json.loads(err.encode()) == {"error": {"message": "why", "type": error_type, "param": "model",
                                                  "code": kind.value}}
    response = err.response()
    assert response.status == status
    assert response.headers["Retry-After"] == "3"
    assert response.headers["Content-Type"] == "application/json"


def test_every_error_kind_has_a_status() -> None:
    assert set(STATUS) == set(ErrorKind)


SYSTEM = "You are a helpful assistant. " * 4  # 116 characters


@pytest.mark.parametrize(("doc", "chars", "expected"), [
    pytest.param({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]},
                 32, "system\x1f" + SYSTEM[:25], id="chat-cut-in-the-system-prompt"),
    pytest.param({"messages": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "hi"}]},
                 20, "system\x1fBe brief.\x1euse", id="chat-across-messages"),
    pytest.param({"messages": [{"role": "user", "content": [
                     {"type": "text", "text": "abc"}, {"type": "image_url", "image_url": {"url": "u"}}]}]},
                 12, "user\x1fabc{'ur", id="chat-parts"),
    pytest.param({"messages": [{"role": "user", "content": "short"}]}, 100, None, id="chat-too-short"),
    pytest.param({"messages": "nonsense"}, 4, None, id="chat-malformed"),
    pytest.param({"prompt": "Once upon a time"}, 9, "Once upon", id="completion"),
    pytest.param({"prompt": ["Once upon a time", "Other"]}, 9, "Once upon", id="completion-batch"),
    pytest.param({"prompt": [101, 2023, 7]}, 8, "101,2023", id="token-ids"),
    pytest.param({"input": "embed this text"}, 5, "embed", id="embedding"),
    pytest.param({"prompt": "Once"}, 9, None, id="completion-too-short"),
    pytest.param({}, 1, None, id="no-prompt"),
])
def test_prompt_prefix(doc: dict[str, object], chars: int, expected: str | None) -> None:
    assert prompt_prefix(doc, chars) == expected


def test_the_prefix_is_read_only_when_asked() -> None:
    body = json.dumps({"model": "m", "prompt": SYSTEM}).encode()
    assert parse_request(body, {}, max_bytes=LIMIT).prefix is None
    assert parse_request(body, {}, max_bytes=LIMIT, prefix_chars=10).prefix == SYSTEM[:10]
