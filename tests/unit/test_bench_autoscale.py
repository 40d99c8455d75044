"""The autoscaling benchmark's bookkeeping on a tiny trace: requests conserved, GPU-hours integrated."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.autoscale import policies, run, traces
from bench.autoscale.harness import ClusterView
from bench.autoscale.harness import run as run_trace

TINY = traces.Trace("tiny", "", tuple(traces.Request(float(s) * 0.5, 200, 20) for s in range(240)), 180.0)


class _Fixed:
    """Asks for a scripted replica count at given times."""

    def __init__(self, script: dict[float, int]) -> None:
        self.name, self.interval, self.script = "fixed", 1.0, script
        self.current = 1

    def observe(self, view: ClusterView) -> None:
        return None

    def decide(self, view: ClusterView) -> int:
        for at, replicas in self.script.items():
            if view.now >= at:
                self.current = replicas
        return self.current


@pytest.mark.parametrize(("script", "gpu_hours"), [
    ({0.0: 1}, 1 * 2 * 180 / 3600),
    ({0.0: 1, 60.0: 3}, (1 * 60 + 3 * 120) * 2 / 3600),  # starting pods cost from the moment asked
], ids=["one replica", "scale up at 60 s"])
def test_harness_bookkeeping(script: dict[float, int], gpu_hours: float) -> None:
    params = run.engine_params()
    result = run_trace(TINY, _Fixed(script), run.sim_config(params, cold_start=30.0), initial_replicas=1)
    assert result.requests == len(TINY.requests)
    assert result.completed + result.lost == result.requests  # every request is accounted for
    assert result.lost == 0
    assert result.gpu_hours == pytest.approx(gpu_hours, abs=2 * 2 / 3600)  # within a tick or two
    assert 0 <= result.within_slo <= result.requests


@pytest.mark.parametrize("policy", run.POLICY_ORDER)
def test_every_policy_runs(policy: str) -> None:
    result = run.run_one(TINY, policy, cold_start=30.0)
    assert result.completed + result.lost == result.requests == len(TINY.requests)
    assert result.gpu_hours > 0 and len(result.times) == len(result.replicas) == len(result.queue)


def test_oracle_asks_one_cold_start_ahead() -> None:
    needed = [1] * 100 + [4] * 50 + [1] * 100
    schedule = policies.Oracle(needed, cold_start=30.0, interval=5.0).schedule
    assert schedule[63] == 1 and schedule[64] == 4  # 100 - (30 + 5 + 1 s of rounding)
    assert schedule[149] == 4 and schedule[150] == 1  # released at once


def test_csv_replay_scales(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:00:00.0000000,100,10\n2023-11-16 18:00:10.5000000,200,20\n")
    trace = traces.load_csv(path, time_scale=2.0, rate_scale=2.0)
    assert len(trace.requests) == 4
    assert trace.requests[0].at == 0.0 and max(r.at for r in trace.requests) == pytest.approx(21.0, abs=1.0)


@pytest.mark.parametrize("text", ["a,b,c\n1,2,3\n", "TIMESTAMP,ContextTokens,GeneratedTokens\nx,1,2\n"],
                         ids=["wrong columns", "bad timestamp"])
def test_csv_replay_refuses(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError):
        traces.load_csv(path)
