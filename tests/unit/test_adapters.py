"""The adapter core (controller/adapters.py) and the ModelAdapter API: table tests, no cluster."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane import gpus, render
from modelplane.api.adapter import AdapterReason, ModelAdapter, effective_lora, with_effective_lora
from modelplane.api.models import InvalidSpecError, LoRASpec, ModelDeployment
from modelplane.controller import adapters as core
from modelplane.planner.catalog import match_model
from modelplane.planner.memory import lora_bytes_per_gpu
from modelplane.planner.plan import build_plan, plan_request_from_spec

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def adapter(name: str, *, base: str = "llama", rank: int = 16, served: str | None = None,
            source: str = "hf://org/sql-lora", created: str = "2026-12-01T00:00:00Z", revision: str = "main",
            namespace: str = "team") -> ModelAdapter:
    spec: dict[str, Any] = {"base": base, "source": source, "rank": rank, "revision": revision}
    if served:
        spec["servedName"] = served
    meta = {"name": name, "namespace": namespace, "creationTimestamp": created, "generation": 1}
    return ModelAdapter.parse({"metadata": meta, "spec": spec})


def base(*, lora: dict[str, Any] | None = None, source: str = "hf://meta-llama/Llama-3.1-8B-Instruct",
         name: str = "llama") -> ModelDeployment:
    engine: dict[str, Any] = {"lora": lora} if lora is not None else {}
    return ModelDeployment.parse({"metadata": {"name": name, "namespace": "team"},
                                  "spec": {"model": {"source": source}, "engine": engine}})


@pytest.mark.parametrize(("explicit", "ranks", "count", "want"), [
    (None, [], 0, None),
    (None, [8], 1, (4, 16, 16)),
    (None, [8, 64], 2, (4, 64, 16)),
    (None, [100], 1, (4, 128, 16)),
    (None, [16] * 17, 17, (4, 16, 32)),
    ({"maxLoras": 8, "maxLoraRank": 32, "maxCpuLoras": 100}, [64], 1, (8, 32, 100)),
    ({"maxLoras": 32}, [], 0, (32, 16, 32)),
], ids=["off", "first-adapter-defaults", "rank-fits-highest", "rank-rounds-up-to-vllm-value",
        "cpu-loras-next-power-of-two", "explicit-wins", "explicit-block-without-adapters"])
def test_effective_lora(explicit: dict[str, Any] | None, ranks: list[int], count: int,
                        want: tuple[int, int, int] | None) -> None:
    adapters = [adapter(f"a{i}", rank=r) for i, r in enumerate(ranks)]
    assert len(adapters) == count
    got = effective_lora(LoRASpec.model_validate(explicit) if explicit else None, adapters)
    assert (None if got is None else (got.max_loras, got.max_lora_rank, got.max_cpu_loras)) == want


def test_adding_adapters_below_the_next_power_of_two_keeps_the_flags() -> None:
    """The pods restart when the flags change: 1 to 16 adapters render the same flags."""
    flags = {tuple(render.lora_args(effective_lora(None, [adapter(f"a{i}") for i in range(n)])))
             for n in range(1, 17)}
    assert flags == {("--enable-lora", "--max-loras", "4", "--max-lora-rank", "16", "--max-cpu-loras", "16")}


def test_base_renders_lora_flags_and_the_runtime_env() -> None:
    md = with_effective_lora(base(), [adapter("sql", rank=32)])
    plan = render.WorkloadPlan(role=render.Role.STABLE, source=md.spec.model.source, revision="main",
                               replicas=1, gpu_type=None, gpus_per_replica=1, tensor_parallel_size=1)
    container = render.build_pod_template(md, md.spec, plan)["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--enable-lora"):args.index("--enable-lora") + 7] == [
        "--enable-lora", "--max-loras", "4", "--max-lora-rank", "32", "--max-cpu-loras", "16"]
    assert {"name": render.LORA_RUNTIME_ENV, "value": "True"} in container["env"]
    plain = base()
    assert "--enable-lora" not in render.vllm_args("llama", plain.spec, plan)


def test_lora_memory_is_what_vllm_preallocates_for_llama_8b() -> None:
    arch = match_model("hf://meta-llama/Llama-3.1-8B-Instruct")
    assert arch is not None
    # 32 layers x (q 8192 + k 5120 + v 5120 + o 8192 + gate 18432 + up 18432 + down 18432) x 2 bytes
    assert lora_bytes_per_gpu(arch.arch, max_loras=4, max_lora_rank=16, tp=1) == 4 * 16 * 32 * 81920 * 2
    assert lora_bytes_per_gpu(arch.arch, max_loras=4, max_lora_rank=16, tp=2) == 4 * 16 * 32 * 81920


@pytest.mark.parametrize(("case", "reason"), [
    ("ok", AdapterReason.ACCEPTED),
    ("no-base", AdapterReason.UNKNOWN_BASE),
    ("rank", AdapterReason.RANK_ABOVE_MAXIMUM),
    ("headroom", AdapterReason.NO_LORA_HEADROOM),
    ("model-name", AdapterReason.SERVED_NAME_CONFLICT),
    ("older-adapter-name", AdapterReason.SERVED_NAME_CONFLICT),
    ("other-claim", AdapterReason.CLAIM_NOT_MOUNTED),
], ids=lambda v: v if isinstance(v, str) else None)
def test_judge(case: str, reason: AdapterReason) -> None:
    me = adapter("sql", rank=64 if case == "rank" else 16, created="2026-12-02T00:00:00Z",
                 source="pvc://other/sql" if case == "other-claim" else "hf://org/sql-lora")
    lora = {"rank": {"maxLoraRank": 32}, "headroom": {"maxLoras": 1, "maxCpuLoras": 1}}.get(case)
    the_base = None if case == "no-base" else base(lora=lora)
    older = adapter("older", served="sql" if case == "older-adapter-name" else "older",
                    created="2026-12-01T00:00:00Z")
    siblings = [me, older] if case in ("headroom", "older-adapter-name") else [me]
    models = {"sql": ("team", "sql-md")} if case == "model-name" else {"llama": ("team", "llama")}
    verdict = core.judge(me, base=the_base, siblings=siblings, model_names=models,
                         adapter_names=core.served_name_keepers([me, older]))
    assert verdict.reason is reason
    assert verdict.loadable is (reason is AdapterReason.ACCEPTED)
    if verdict.loadable:
        assert verdict.path == "org/sql-lora"
    else:
        assert verdict.message


@pytest.mark.parametrize(("source", "base_source", "path"), [
    ("hf://org/sql-lora", "hf://meta-llama/Llama-3.1-8B-Instruct", "org/sql-lora"),
    ("s3://bucket-x/adapters/sql", "hf://meta-llama/Llama-3.1-8B-Instruct", "s3://bucket-x/adapters/sql"),
    ("gs://bucket-x/adapters/sql", "hf://meta-llama/Llama-3.1-8B-Instruct", "gs://bucket-x/adapters/sql"),
    ("pvc://models/adapters/sql", "pvc://models/llama", "/models/adapters/sql"),
    ("pvc://other/sql", "pvc://models/llama", None),
], ids=["hf", "s3", "gs", "pvc-base-claim", "pvc-other-claim"])
def test_lora_path(source: str, base_source: str, path: str | None) -> None:
    assert core.lora_path(adapter("a", source=source), base(source=base_source)) == path


W = core.Wanted("sql", "org/sql", "r2")


@pytest.mark.parametrize(("loaded", "revisions", "retry_at", "want"), [
    ({"p0": {}}, {}, {}, [("p0", True, "sql", False)]),
    ({"p0": {"sql": "org/sql"}}, {("p0", "sql"): "r2"}, {}, []),
    ({"p0": {"sql": "org/sql"}}, {}, {}, []),
    ({"p0": {"sql": "org/sql"}}, {("p0", "sql"): "r1"}, {}, [("p0", True, "sql", True)]),
    ({"p0": {"sql": "org/old"}}, {}, {}, [("p0", True, "sql", True)]),
    ({"p0": {"sql": "org/sql", "gone": "x"}}, {}, {}, [("p0", False, "gone", False)]),
    ({"p0": {}}, {}, {("p0", "sql", "org/sql"): 200.0}, []),
    ({"p0": {}}, {}, {("p0", "sql", "org/sql"): 50.0}, [("p0", True, "sql", False)]),
    ({"p0": {}, "p1": {"sql": "org/sql"}}, {}, {}, [("p0", True, "sql", False)]),
], ids=["missing", "current", "current-after-restart-of-operator", "new-revision-in-place",
        "new-path-in-place", "unwanted-unloaded", "failed-waits", "failed-retried", "only-the-new-replica"])
def test_plan_actions(loaded: dict[str, dict[str, str]], revisions: dict[tuple[str, str], str],
                      retry_at: dict[tuple[str, str, str], float],
                      want: list[tuple[str, bool, str, bool]]) -> None:
    actions = core.plan_actions([W], loaded=loaded, revisions=revisions, retry_at=retry_at, now=100.0)
    assert [(a.pod, a.load, a.name, a.in_place) for a in actions] == want


OK = core.Verdict(True, AdapterReason.ACCEPTED, "loads", "org/sql-lora")


@pytest.mark.parametrize(("verdict", "ready", "loaded", "failures", "phase", "reason", "count"), [
    (OK, ["p0", "p1"], {"p0": {"sql": "org/sql-lora"}, "p1": {"sql": "org/sql-lora"}}, {}, "Ready", "Loaded",
     2),
    (OK, ["p0", "p1"], {"p0": {"sql": "org/sql-lora"}, "p1": {}}, {}, "Pending", "Loading", 1),
    (OK, [], {}, {}, "Pending", "NoReadyReplica", 0),
    (OK, ["p0"], {"p0": {}}, {"p0": "HTTP 404: No adapter found"}, "Failed", "LoadFailed", 0),
    (OK, ["p0", "p1"], {"p0": {"sql": "org/sql-lora"}, "p1": {}}, {"p1": "HTTP 500: boom"}, "Degraded",
     "LoadFailed", 1),
    (core.Verdict(False, AdapterReason.UNKNOWN_BASE, "no base"), ["p0"], {}, {}, "Failed", "UnknownBase", 0),
], ids=["all-loaded", "loading", "no-replica", "failed-everywhere", "failed-somewhere", "not-loadable"])
def test_build_status(verdict: core.Verdict, ready: list[str], loaded: dict[str, dict[str, str]],
                      failures: dict[str, str], phase: str, reason: str, count: int) -> None:
    status = core.build_status(adapter("sql"), verdict, ready_pods=ready, loaded=loaded, failures=failures,
                               old_status=None, now=NOW)
    assert status["phase"] == phase
    assert status["loadedReplicas"] == count
    ready_condition = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready_condition["reason"] == reason
    for pod, message in failures.items():
        assert message in ready_condition["message"] or any(
            r["pod"] == pod and r["message"] == message for r in status["replicas"])


def test_an_unchanged_world_renders_the_same_status() -> None:
    """No write at steady state: a later reconcile renders the status the object already has."""
    loaded = {"p0": {"sql": "org/sql-lora"}}
    first = core.build_status(adapter("sql"), OK, ready_pods=["p0"], loaded=loaded, failures={},
                              old_status=None, now=NOW)
    later = core.build_status(adapter("sql"), OK, ready_pods=["p0"], loaded=loaded, failures={},
                              old_status=first, now=NOW.replace(hour=13))
    assert not core.status_changed(first, later)
    gone = core.build_status(adapter("sql"), OK, ready_pods=["p0"], loaded={"p0": {}}, failures={},
                             old_status=first, now=NOW.replace(hour=13))
    assert core.status_changed(first, gone)


@pytest.mark.parametrize(("spec", "field"), [
    ({"base": "Llama", "source": "hf://org/x"}, "spec.base"),
    ({"base": "llama", "source": "oci://reg/x:1"}, "spec.source"),
    ({"base": "llama", "source": "hf://no-org"}, "spec.source"),
    ({"base": "llama", "source": "hf://org/x", "rank": 1024}, "spec.rank"),
    ({"base": "llama", "source": "hf://org/x", "rank": 0}, "spec.rank"),
    ({"base": "llama", "source": "hf://org/x", "servedName": "bad name"}, "spec.servedName"),
    ({"source": "hf://org/x"}, "spec.base"),
    ({"base": "llama", "source": "hf://org/x", "typo": 1}, "spec.typo"),
], ids=["base-not-dns", "oci-refused", "hf-malformed", "rank-too-high", "rank-zero", "served-name",
        "base-missing", "unknown-field"])
def test_bad_adapter_specs_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpecError) as raised:
        ModelAdapter.parse({"metadata": {"name": "a", "namespace": "team"}, "spec": spec})
    assert field in [path for path, _ in raised.value.problems]


def test_lora_cpu_below_gpu_is_refused_with_the_field() -> None:
    with pytest.raises(InvalidSpecError, match="maxCpuLoras must be >= maxLoras"):
        base(lora={"maxLoras": 8, "maxCpuLoras": 4})


def test_extra_args_may_not_set_the_lora_flags() -> None:
    with pytest.raises(InvalidSpecError, match="spec.engine.lora"):
        ModelDeployment.parse({"metadata": {"name": "x"}, "spec": {
            "model": {"source": "hf://org/x"}, "engine": {"extraArgs": ["--max-loras=4"]}}})


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "adapters" / "llama-3.1-8b-with-adapters.yaml"


def test_the_adapters_example_is_valid_loadable_and_planned_as_its_comment_says() -> None:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    [md_doc] = [d for d in docs if d["kind"] == "ModelDeployment"]
    md = ModelDeployment.parse({**md_doc, "metadata": {**md_doc["metadata"], "namespace": "team"}})
    adapters = [ModelAdapter.parse({**d, "metadata": {**d["metadata"], "namespace": "team"}})
                for d in docs if d["kind"] == "ModelAdapter"]
    assert len(adapters) == 2
    for a in adapters:
        verdict = core.judge(a, base=md, siblings=adapters, model_names={md.served_name: ("team", md.name)},
                             adapter_names=core.served_name_keepers(adapters))
        assert verdict.loadable, verdict.message
    # Explicit limits: the effective settings are the spec's, so adapters never change the flags.
    assert with_effective_lora(md, adapters).spec.engine.lora == md.spec.engine.lora
    plan = build_plan(plan_request_from_spec(with_effective_lora(md, adapters).spec), gpus.GPU_TYPES)
    shape = re.search(r"^# GPU shape: (\d+x [a-z0-9-]+) per replica", EXAMPLE.read_text(), re.MULTILINE)
    assert shape is not None and plan.fits and plan.shape == shape.group(1)
    assert plan.memory is not None and round(plan.memory.overhead_gib, 1) == 2.1


def test_the_api_servers_defaults_do_not_read_as_a_change() -> None:
    """The CRD defaults an empty ``message`` into each replica: the status read back equals the one
    written, or every reconcile would write again (the 50-adapter e2e caught it)."""
    written = core.build_status(adapter("sql"), OK, ready_pods=["p0"], loaded={"p0": {"sql": "org/sql-lora"}},
                                failures={}, old_status=None, now=NOW)
    read_back = {**written, "replicas": [{**r, "message": ""} for r in written["replicas"]]}
    assert read_back != written
    assert not core.status_changed(read_back, written)


def conditions(*conds: tuple[str, str, str]) -> dict[str, Any]:
    return {"conditions": [{"type": t, "status": s, "reason": r, "message": f"{r} said"}
                           for t, s, r in conds]}


@pytest.mark.parametrize(("old", "new", "events"), [
    # First status of a good adapter still loading: nothing worth an Event yet.
    pytest.param(None, conditions(("Loadable", "True", "Accepted"), ("Ready", "False", "Loading")), [],
                 id="first-loading"),
    # Loaded on every replica: one Normal Event.
    pytest.param(conditions(("Loadable", "True", "Accepted"), ("Ready", "False", "Loading")),
                 conditions(("Loadable", "True", "Accepted"), ("Ready", "True", "Loaded")),
                 [("Normal", "Loaded", "Ready: Loaded said")], id="ready"),
    # A steady adapter rewritten (a message or count changed): no Event.
    pytest.param(conditions(("Loadable", "True", "Accepted"), ("Ready", "True", "Loaded")),
                 conditions(("Loadable", "True", "Accepted"), ("Ready", "True", "Loaded")), [], id="steady"),
    # vLLM refused the load: a Warning carrying its message.
    pytest.param(conditions(("Loadable", "True", "Accepted"), ("Ready", "False", "Loading")),
                 conditions(("Loadable", "True", "Accepted"), ("Ready", "False", "LoadFailed")),
                 [("Warning", "LoadFailed", "Ready: LoadFailed said")], id="load-failed"),
    # Both conditions name the same failure: one Event, not two.
    pytest.param(None, conditions(("Loadable", "False", "UnknownBase"), ("Ready", "False", "UnknownBase")),
                 [("Warning", "UnknownBase", "Loadable: UnknownBase said")], id="one-per-reason"),
    # Still failing the same way at the next write: said once already.
    pytest.param(conditions(("Loadable", "False", "UnknownBase"), ("Ready", "False", "UnknownBase")),
                 conditions(("Loadable", "False", "UnknownBase"), ("Ready", "False", "UnknownBase")), [],
                 id="still-failing"),
])
def test_a_status_write_tells_of_failures_and_readiness_once(
        old: dict[str, Any] | None, new: dict[str, Any], events: list[tuple[str, str, str]]) -> None:
    assert core.condition_events(old, new) == events
