"""``modelplane gateway``'s flags and its fixed-table file: bad input is refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelplane.cli import build_parser
from modelplane.gateway.cache import load_routes_file
from modelplane.gateway.run import config_from
from modelplane.gateway.table import CanarySplit, Endpoint


def test_the_flags_become_a_config(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("models: [{name: chat, endpoints: ['127.0.0.1:9000']}]\n")
    args = build_parser().parse_args([
        "gateway", "--port", "8001", "--workers", "2", "-n", "a", "-n", "b", "--routes", str(routes),
        "--max-held", "5", "--hold-timeout", "60", "--retry-after", "3", "--session-header", "X-User",
        "--prefix-chars", "2048", "--metrics-port", "0"])
    config = config_from(args)
    assert (config.port, config.namespaces, config.routes_file) == (8001, ("a", "b"), routes)
    s = config.settings
    assert (s.holds.max_per_model, s.holds.timeout_seconds, s.holds.retry_after_seconds) == (5, 60.0, 3)
    assert (s.session_header, s.prefix_chars, s.serve_metrics) == ("x-user", 2048, True)


def test_the_ledger_flags(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"  # no cluster credentials needed to parse the flags
    routes.write_text("models: []\n")
    args = build_parser().parse_args(["gateway", "--routes", str(routes), "--ledger-namespace", "mp",
                                      "--ledger-id", "gw-0", "--ledger-sync-seconds", "2.5"])
    config = config_from(args)
    assert (config.ledger_namespace, config.ledger_id, config.ledger_sync_seconds) == ("mp", "gw-0", 2.5)
    # Outside a pod (no ServiceAccount namespace file) the shards go to 'default'.
    default = config_from(build_parser().parse_args(["gateway", "--routes", str(routes)]))
    assert (default.ledger_namespace, default.ledger_id) == ("default", "")


@pytest.mark.parametrize(("argv", "says"), [
    (["--workers", "0"], "--workers must be >= 1"),
    (["--workers", "2", "--port", "0"], "needs a fixed --port"),
    (["--max-held", "-1"], "hold limits must be >= 0"),
    (["--max-body-bytes", "0"], "max_body_bytes must be >= 1"),
    (["--connect-timeout", "0"], "connect_timeout_seconds must be > 0"),
    (["--prefix-chars", "-5"], "prefix_chars must be >= 0"),
    (["--affinity-load-factor", "0.9"], "affinity_load_factor must be >= 1"),
    (["--routes", "/nonexistent/routes.yaml"], "--routes"),
    (["--ledger-sync-seconds", "0"], "--ledger-sync-seconds must be > 0"),
])
def test_bad_flags_are_refused(argv: list[str], says: str) -> None:
    with pytest.raises(SystemExit, match=says.replace("-", r"\-")):
        config_from(build_parser().parse_args(["gateway", *argv]))


def test_a_routes_file(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("""
models:
  - name: chat
    endpoints: ["10.0.0.1:8000", "10.0.0.2:8000"]
    canary: {endpoints: ["10.0.0.3:8000"], weight: 10}
  - name: code
    namespace: team
    endpoints: []
""")
    table = load_routes_file(path)
    chat, code = table.models["chat"], table.models["code"]
    assert chat.split == CanarySplit("canary", 10)
    assert chat.endpoints == (Endpoint("10.0.0.1:8000", revision="stable"),
                              Endpoint("10.0.0.2:8000", revision="stable"),
                              Endpoint("10.0.0.3:8000", revision="canary"))
    assert (code.namespace, code.endpoints, code.phase) == ("team", (), "Ready")


@pytest.mark.parametrize(("text", "says"), [
    ("[]", "expected a mapping with a list under 'models'"),
    ("models: {}", "expected a mapping with a list under 'models'"),
    ("models: [{endpoints: []}]", r"models\[0\]: needs a 'name'"),
    ("models: [{name: chat, endpoints: [10.0.0.1]}]", r"models\[0\].endpoints: expected a list of host:port"),
    ("models: [{name: chat, canary: [1]}]", r"models\[0\].canary: expected a mapping"),
    ("models: [{name: chat, canary: {weight: 101}}]",
     r"models\[0\].canary.weight: expected an integer 0-100"),
    ("models: [{name: chat, canary: {weight: 5, endpoints: 'x:1'}}]",
     r"models\[0\].canary.endpoints: expected a list of host:port"),
])
def test_a_bad_routes_file_is_refused(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=says):
        load_routes_file(path)
