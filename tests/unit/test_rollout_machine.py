"""The rollout state machine: one table row per transition, plus scenarios and the status round trip."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelplane.api import models
from modelplane.api.models import CanaryStatus, RolloutRecord
from modelplane.rollout.analysis import AnalysisResult, Outcome, WindowStats
from modelplane.rollout.machine import (
    DEFAULT_SETTINGS,
    Action,
    BeginAnalysisWindow,
    CancelEvaluation,
    Command,
    Decision,
    DeployCanary,
    EmitEvent,
    EvalResult,
    HistoryEntry,
    InconclusivePolicy,
    Inputs,
    ManualControl,
    Phase,
    Promote,
    Reason,
    RecordHistory,
    Rollback,
    RolloutState,
    RunAnalysis,
    SetWeight,
    StartEvaluation,
    SwitchStable,
    advance,
    canary_replicas,
    parse_control,
    replicas_for,
    window_end,
)
from modelplane.rollout.power import PowerCheck, assess
from modelplane.rollout.spec import RolloutSpec, Step, rollout_spec_from_api
from modelplane.rollout.stats import PairedOutcome, evaluate_gate, outcomes_from_pairs

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def rollout_spec(raw: dict[str, object]) -> RolloutSpec:
    """The machine's spec as the operator builds it: from the parsed API model."""
    parsed = rollout_spec_from_api(models.RolloutSpec.model_validate(raw))
    assert parsed is not None
    return parsed


SPEC = rollout_spec({"steps": [{"weight": 10, "pause": "5m"}, {"weight": 50, "pause": "10m"}],
                     "evaluation": {"suiteRef": {"configMap": "suite"}, "minScore": 0.8,
                                    "analysis": {"maxErrorRate": 0.05}}})
NO_EVAL = replace(SPEC, evaluation=False)
NO_STEPS = replace(SPEC, steps=())
NO_ANALYSIS = replace(SPEC, analysis=False)
ROLLBACK_ON_INCONCLUSIVE = replace(DEFAULT_SETTINGS, on_inconclusive=InconclusivePolicy.ROLLBACK)

PASS_EVAL = EvalResult(
    passed=True, reason="ok", canary_score=0.9, stable_score=0.88, lower_bound=-0.01, cases=300
)
FAIL_EVAL = EvalResult(
    passed=False,
    reason="worse",
    canary_score=0.7,
    stable_score=0.88,
    lower_bound=-0.22,
    cases=300,
    failing_case_ids=tuple(f"c{i}" for i in range(30)),
)
_W = WindowStats(requests=100, errors=0, error_rate=0.0, ttft_p95=0.2)
PASS_WINDOW = AnalysisResult(Outcome.PASS, "fine", _W, _W)
FAIL_WINDOW = AnalysisResult(Outcome.FAIL, "errors", _W, _W)
UNSURE_WINDOW = AnalysisResult(Outcome.INCONCLUSIVE, "too few", _W, _W)


def st(phase: Phase, **fields: Any) -> RolloutState:
    """A state mid-rollout of r2 over stable r1, entered at T0."""
    base = RolloutState(
        phase=phase, stable_revision="r1", canary_revision="r2", started_at=T0, phase_since=T0
    )
    if phase in (Phase.STEPPING, Phase.ANALYZING, Phase.PAUSED):
        base = replace(base, weight=10)
    if phase is Phase.ANALYZING:
        base = replace(base, step_started_at=T0)
    if phase is Phase.EVALUATING:
        base = replace(base, evaluation_attempts=1)
    if phase is Phase.PROMOTING:
        base = replace(base, weight=100, decision=Decision.PROMOTED, reason=Reason.STEPS_COMPLETE)
    if phase is Phase.ROLLING_BACK:
        base = replace(base, decision=Decision.ROLLED_BACK, reason=Reason.ANALYSIS_FAILED)
    if phase in (Phase.IDLE, Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED):
        base = replace(base, canary_revision=None)
    return replace(base, **fields)


def obs(**fields: Any) -> Inputs:
    fields.setdefault("desired_revision", "r2")
    return Inputs(**fields)


def ctl(command: Command, **fields: Any) -> Inputs:
    return obs(control=ManualControl(command, f"{command.value}@1"), **fields)


@dataclass(frozen=True)
class Row:
    state: RolloutState
    inputs: Inputs
    phase: Phase
    actions: list[type]
    spec: RolloutSpec | None = SPEC
    after: timedelta = timedelta(seconds=10)
    expect: dict[str, Any] | None = None
    settings: Any = DEFAULT_SETTINGS


ROWS = {
    # --- settled phases ---------------------------------------------------------------------------
    "first-revision-becomes-stable": Row(
        RolloutState(),
        obs(desired_revision="r1"),
        Phase.IDLE,
        [SwitchStable, EmitEvent],
        expect={"stable_revision": "r1", "reason": Reason.INITIAL_DEPLOY},
    ),
    "no-desired-revision-does-nothing": Row(st(Phase.IDLE), Inputs(), Phase.IDLE, []),
    "unchanged-revision-does-nothing": Row(st(Phase.IDLE), obs(desired_revision="r1"), Phase.IDLE, []),
    "revision-change-starts-canary-at-weight-0": Row(
        st(Phase.IDLE),
        obs(),
        Phase.DEPLOYING,
        [DeployCanary, SetWeight, EmitEvent],
        expect={
            "canary_revision": "r2",
            "weight": 0,
            "stable_revision": "r1",
            "started_at": T0 + timedelta(seconds=10),
        },
    ),
    "no-rollout-spec-switches-directly": Row(
        st(Phase.IDLE),
        obs(),
        Phase.IDLE,
        [SwitchStable, RecordHistory, EmitEvent],
        spec=None,
        expect={"stable_revision": "r2", "decision": Decision.DIRECT},
    ),
    "rejected-revision-is-not-retried": Row(
        st(Phase.ROLLED_BACK, rejected_revision="r2"), obs(), Phase.ROLLED_BACK, []
    ),
    "spec-back-to-stable-after-rollback-clears-rejection": Row(
        st(Phase.ROLLED_BACK, rejected_revision="r2"),
        obs(desired_revision="r1"),
        Phase.ROLLED_BACK,
        [],
        expect={"rejected_revision": None},
    ),
    "new-revision-after-rollback-starts-again": Row(
        st(Phase.ROLLED_BACK, rejected_revision="r2"),
        obs(desired_revision="r3"),
        Phase.DEPLOYING,
        [DeployCanary, SetWeight, EmitEvent],
        expect={"canary_revision": "r3", "rejected_revision": None},
    ),
    "new-revision-after-abort-starts-again": Row(
        st(Phase.ABORTED, rejected_revision="r2"),
        obs(desired_revision="r3"),
        Phase.DEPLOYING,
        [DeployCanary, SetWeight, EmitEvent],
    ),
    "new-revision-after-promotion-starts-again": Row(
        st(Phase.PROMOTED), obs(desired_revision="r3"), Phase.DEPLOYING, [DeployCanary, SetWeight, EmitEvent]
    ),
    # --- deploying ------------------------------------------------------------------------------
    "deploying-waits-for-the-canary": Row(st(Phase.DEPLOYING), obs(), Phase.DEPLOYING, []),
    "canary-ready-starts-evaluation-before-any-traffic": Row(
        st(Phase.DEPLOYING),
        obs(canary_ready_replicas=1, canary_present=True),
        Phase.EVALUATING,
        [StartEvaluation, EmitEvent],
        expect={"weight": 0, "evaluation_attempts": 1},
    ),
    "canary-ready-without-evaluation-steps": Row(
        st(Phase.DEPLOYING),
        obs(canary_ready_replicas=1),
        Phase.STEPPING,
        [SetWeight, EmitEvent],
        spec=NO_EVAL,
        expect={"weight": 10, "step": 0},
    ),
    "canary-ready-without-evaluation-or-steps-promotes": Row(
        st(Phase.DEPLOYING),
        obs(canary_ready_replicas=1),
        Phase.PROMOTING,
        [Promote, EmitEvent],
        spec=replace(NO_EVAL, steps=()),
    ),
    "canary-ready-with-pending-pause-pauses-at-0": Row(
        st(Phase.DEPLOYING, hold=True),
        obs(canary_ready_replicas=1),
        Phase.PAUSED,
        [EmitEvent],
        spec=NO_EVAL,
        expect={"weight": 0},
    ),
    "canary-never-ready-rolls-back": Row(
        st(Phase.DEPLOYING),
        obs(),
        Phase.ROLLING_BACK,
        [SetWeight, Rollback, EmitEvent],
        after=timedelta(hours=2),
        expect={"reason": Reason.CANARY_NOT_READY, "decision": Decision.ROLLED_BACK},
    ),
    # --- evaluating -----------------------------------------------------------------------------
    "gate-passed-enters-first-step": Row(
        st(Phase.EVALUATING),
        obs(evaluation=PASS_EVAL),
        Phase.STEPPING,
        [EmitEvent, SetWeight, EmitEvent],
        expect={"weight": 10, "eval_score": 0.9, "baseline_score": 0.88, "eval_cases": 300},
    ),
    "gate-failed-rolls-back-with-scores": Row(
        st(Phase.EVALUATING),
        obs(evaluation=FAIL_EVAL),
        Phase.ROLLING_BACK,
        [SetWeight, Rollback, EmitEvent],
        expect={
            "reason": Reason.EVALUATION_FAILED,
            "eval_score": 0.7,
            "eval_lower_bound": -0.22,
            "failing_case_ids": tuple(f"c{i}" for i in range(20)),
        },
    ),
    "gate-passed-with-pending-pause-pauses": Row(
        st(Phase.EVALUATING, hold=True),
        obs(evaluation=PASS_EVAL),
        Phase.PAUSED,
        [EmitEvent, EmitEvent],
        expect={"weight": 0},
    ),
    "gate-passed-without-steps-promotes": Row(
        st(Phase.EVALUATING),
        obs(evaluation=PASS_EVAL),
        Phase.PROMOTING,
        [EmitEvent, Promote, EmitEvent],
        spec=NO_STEPS,
    ),
    "evaluation-running-waits": Row(st(Phase.EVALUATING), obs(evaluation_running=True), Phase.EVALUATING, []),
    "evaluation-error-retries": Row(
        st(Phase.EVALUATING),
        obs(evaluation_error="stable unreachable"),
        Phase.EVALUATING,
        [StartEvaluation, EmitEvent],
        expect={"evaluation_attempts": 2},
    ),
    "evaluation-lost-after-restart-reruns": Row(
        st(Phase.EVALUATING),
        obs(evaluation_running=False),
        Phase.EVALUATING,
        [StartEvaluation, EmitEvent],
        expect={"evaluation_attempts": 2},
    ),
    "evaluation-errors-exhausted-roll-back": Row(
        st(Phase.EVALUATING, evaluation_attempts=3),
        obs(evaluation_error="boom"),
        Phase.ROLLING_BACK,
        [SetWeight, Rollback, EmitEvent],
        expect={"reason": Reason.EVALUATION_ERROR},
    ),
    "evaluation-timeout-rolls-back": Row(
        st(Phase.EVALUATING),
        obs(evaluation_running=True),
        Phase.ROLLING_BACK,
        [CancelEvaluation, SetWeight, Rollback, EmitEvent],
        after=timedelta(hours=2),
        expect={"reason": Reason.EVALUATION_TIMEOUT},
    ),
    # --- stepping -------------------------------------------------------------------------------
    "stepping-waits-for-canary-replicas": Row(
        st(Phase.STEPPING, weight=50), obs(total_replicas=10, canary_ready_replicas=2), Phase.STEPPING, []
    ),
    "stepping-replicas-ready-opens-window": Row(
        st(Phase.STEPPING, weight=50),
        obs(total_replicas=10, canary_ready_replicas=5),
        Phase.ANALYZING,
        [BeginAnalysisWindow, EmitEvent],
        expect={"step_started_at": T0 + timedelta(seconds=10)},
    ),
    "stepping-replicas-never-ready-rolls-back": Row(
        st(Phase.STEPPING, weight=50),
        obs(total_replicas=10, canary_ready_replicas=2),
        Phase.ROLLING_BACK,
        [SetWeight, Rollback, EmitEvent],
        after=timedelta(hours=2),
        expect={"reason": Reason.CANARY_NOT_READY},
    ),
    # --- analyzing ------------------------------------------------------------------------------
    "window-not-over-waits": Row(st(Phase.ANALYZING), obs(), Phase.ANALYZING, [], after=timedelta(minutes=4)),
    "window-over-asks-for-analysis": Row(
        st(Phase.ANALYZING), obs(), Phase.ANALYZING, [RunAnalysis], after=timedelta(minutes=5)
    ),
    "analysis-pass-next-step": Row(
        st(Phase.ANALYZING),
        obs(analysis=PASS_WINDOW),
        Phase.STEPPING,
        [EmitEvent, SetWeight, EmitEvent],
        after=timedelta(minutes=5),
        expect={"step": 1, "weight": 50, "window_extensions": 0},
    ),
    "analysis-pass-on-last-step-promotes": Row(
        st(Phase.ANALYZING, step=1, weight=50),
        obs(analysis=PASS_WINDOW),
        Phase.PROMOTING,
        [EmitEvent, Promote, EmitEvent],
        after=timedelta(minutes=10),
        expect={"reason": Reason.STEPS_COMPLETE},
    ),
    "analysis-fail-rolls-back": Row(
        st(Phase.ANALYZING),
        obs(analysis=FAIL_WINDOW),
        Phase.ROLLING_BACK,
        [SetWeight, Rollback, EmitEvent],
        after=timedelta(minutes=5),
        expect={"reason": Reason.ANALYSIS_FAILED, "weight": 0},
    ),
    "analysis-inconclusive-holds-and-extends": Row(
        st(Phase.ANALYZING),
        obs(analysis=UNSURE_WINDOW),
        Phase.ANALYZING,
        [EmitEvent],
        after=timedelta(minutes=5),
        expect={"window_extensions": 1, "weight": 10, "step_started_at": T0},
    ),
    "extended-window-not-over-waits": Row(
        st(Phase.ANALYZING, window_extensions=1), obs(), Phase.ANALYZING, [], after=timedelta(minutes=9)
    ),
    "extended-window-over-asks-again": Row(
        st(Phase.ANALYZING, window_extensions=1),
        obs(),
        Phase.ANALYZING,
        [RunAnalysis],
        after=timedelta(minutes=10),
    ),
    "inconclusive-after-max-extensions-pauses": Row(
        st(Phase.ANALYZING, window_extensions=3),
        obs(analysis=UNSURE_WINDOW),
        Phase.PAUSED,
        [EmitEvent],
        after=timedelta(minutes=20),
        expect={"reason": Reason.ANALYSIS_INCONCLUSIVE, "weight": 10},
    ),
    "inconclusive-after-max-extensions-rolls-back-if-so-set": Row(
        st(Phase.ANALYZING, window_extensions=3),
        obs(analysis=UNSURE_WINDOW),
        Phase.ROLLING_BACK,
        [SetWeight, Rollback, EmitEvent],
        after=timedelta(minutes=20),
        settings=ROLLBACK_ON_INCONCLUSIVE,
        expect={"reason": Reason.ANALYSIS_INCONCLUSIVE},
    ),
    "lost-window-snapshot-restarts-window": Row(
        st(Phase.ANALYZING),
        obs(analysis_window_open=False),
        Phase.ANALYZING,
        [BeginAnalysisWindow, EmitEvent],
        after=timedelta(minutes=3),
        expect={"step_started_at": T0 + timedelta(minutes=3)},
    ),
    "without-analysis-pause-elapses-to-next-step": Row(
        st(Phase.ANALYZING),
        obs(),
        Phase.STEPPING,
        [SetWeight, EmitEvent],
        spec=NO_ANALYSIS,
        after=timedelta(minutes=5),
        expect={"step": 1},
    ),
    "steps-removed-mid-rollout-promotes": Row(
        st(Phase.ANALYZING, step=1),
        obs(),
        Phase.PROMOTING,
        [Promote, EmitEvent],
        spec=replace(SPEC, steps=(Step(10, 300),)),
    ),
    # --- paused ---------------------------------------------------------------------------------
    "paused-stays-paused": Row(st(Phase.PAUSED), obs(), Phase.PAUSED, [], after=timedelta(days=1)),
    # --- promoting and rolling back -------------------------------------------------------------
    "promoting-with-1-of-4-ready-keeps-the-last-step-weight": Row(
        st(Phase.PROMOTING, step=1, weight=50),
        obs(total_replicas=4, canary_present=True, canary_ready_replicas=1, stable_revision_live="r1"),
        Phase.PROMOTING,
        [],
        expect={"weight": 50},
    ),
    "promoting-with-4-of-4-ready-takes-100": Row(
        st(Phase.PROMOTING, step=1, weight=50),
        obs(total_replicas=4, canary_present=True, canary_ready_replicas=4, stable_revision_live="r1"),
        Phase.PROMOTING,
        [SetWeight, EmitEvent],
        expect={"weight": 100, "reason": Reason.STEPS_COMPLETE, "phase_since": T0},
    ),
    "promoting-fleet-never-ready-rolls-back": Row(
        st(Phase.PROMOTING, step=1, weight=50),
        obs(total_replicas=4, canary_present=True, canary_ready_replicas=2, stable_revision_live="r1"),
        Phase.ROLLING_BACK,
        [SetWeight, Rollback, EmitEvent],
        after=timedelta(hours=1, seconds=1),
        expect={"weight": 0, "reason": Reason.CANARY_NOT_READY, "decision": Decision.ROLLED_BACK},
    ),
    "promoting-waits-for-new-stable": Row(
        st(Phase.PROMOTING), obs(stable_revision_live="r1", canary_present=True), Phase.PROMOTING, []
    ),
    "promoting-waits-for-canary-removal": Row(
        st(Phase.PROMOTING), obs(stable_revision_live="r2", canary_present=True), Phase.PROMOTING, []
    ),
    "promotion-completes": Row(
        st(Phase.PROMOTING, eval_score=0.9),
        obs(stable_revision_live="r2"),
        Phase.PROMOTED,
        [RecordHistory, EmitEvent],
        expect={"stable_revision": "r2", "canary_revision": None, "weight": 0, "decision": Decision.PROMOTED},
    ),
    "new-revision-during-promotion-waits-for-it": Row(
        st(Phase.PROMOTING),
        obs(desired_revision="r3", stable_revision_live="r1", canary_present=True),
        Phase.PROMOTING,
        [],
    ),
    "rolling-back-waits-for-canary-removal": Row(
        st(Phase.ROLLING_BACK), obs(canary_present=True), Phase.ROLLING_BACK, []
    ),
    "rollback-completes": Row(
        st(Phase.ROLLING_BACK),
        obs(),
        Phase.ROLLED_BACK,
        [RecordHistory, EmitEvent],
        expect={"rejected_revision": "r2", "canary_revision": None, "stable_revision": "r1"},
    ),
    "abort-completes": Row(
        st(Phase.ROLLING_BACK, decision=Decision.ABORTED, reason=Reason.ABORTED),
        obs(),
        Phase.ABORTED,
        [RecordHistory, EmitEvent],
        expect={"rejected_revision": "r2"},
    ),
    "revert-completes-without-rejecting": Row(
        st(Phase.ROLLING_BACK, decision=Decision.ABORTED, reason=Reason.SPEC_REVERTED),
        obs(desired_revision="r1"),
        Phase.ABORTED,
        [RecordHistory, EmitEvent],
        expect={"rejected_revision": None},
    ),
    # --- the spec changes during a rollout ------------------------------------------------------
    "new-revision-supersedes-canary": Row(
        st(Phase.ANALYZING),
        obs(desired_revision="r3"),
        Phase.DEPLOYING,
        [Rollback, RecordHistory, DeployCanary, SetWeight, EmitEvent],
        expect={"canary_revision": "r3", "weight": 0, "stable_revision": "r1"},
    ),
    "new-revision-supersedes-evaluation": Row(
        st(Phase.EVALUATING),
        obs(desired_revision="r3"),
        Phase.DEPLOYING,
        [CancelEvaluation, Rollback, RecordHistory, DeployCanary, SetWeight, EmitEvent],
    ),
    "spec-back-to-stable-aborts-canary": Row(
        st(Phase.STEPPING),
        obs(desired_revision="r1"),
        Phase.ROLLING_BACK,
        [SetWeight, Rollback, EmitEvent],
        expect={"decision": Decision.ABORTED, "reason": Reason.SPEC_REVERTED},
    ),
    "new-revision-and-rollout-removed-switch-directly": Row(
        st(Phase.ANALYZING),
        obs(desired_revision="r3"),
        Phase.IDLE,
        [Rollback, RecordHistory, SwitchStable, EmitEvent],
        spec=None,
        expect={"stable_revision": "r3"},
    ),
    "rollout-removed-mid-rollout-promotes": Row(
        st(Phase.ANALYZING),
        obs(),
        Phase.PROMOTING,
        [Promote, EmitEvent],
        spec=None,
        expect={"reason": Reason.GATE_REMOVED},
    ),
    # --- manual controls ------------------------------------------------------------------------
    "pause-while-analyzing": Row(
        st(Phase.ANALYZING),
        ctl(Command.PAUSE),
        Phase.PAUSED,
        [EmitEvent],
        expect={"weight": 10, "handled_control": "pause@1"},
    ),
    "pause-while-stepping": Row(st(Phase.STEPPING), ctl(Command.PAUSE), Phase.PAUSED, [EmitEvent]),
    "pause-while-evaluating-is-pending": Row(
        st(Phase.EVALUATING), ctl(Command.PAUSE), Phase.EVALUATING, [EmitEvent], expect={"hold": True}
    ),
    "pause-while-deploying-is-pending": Row(
        st(Phase.DEPLOYING), ctl(Command.PAUSE), Phase.DEPLOYING, [EmitEvent], expect={"hold": True}
    ),
    "pause-without-rollout-is-ignored": Row(
        st(Phase.IDLE),
        ctl(Command.PAUSE),
        Phase.IDLE,
        [EmitEvent],
        expect={"reason": None, "handled_control": "pause@1"},
    ),
    "resume-restarts-current-step": Row(
        st(Phase.PAUSED, step=1, weight=50),
        ctl(Command.RESUME),
        Phase.STEPPING,
        [EmitEvent, SetWeight, EmitEvent],
        expect={"step": 1, "weight": 50, "window_extensions": 0},
    ),
    "resume-before-traffic-enters-first-step": Row(
        st(Phase.PAUSED, weight=0, hold=True),
        ctl(Command.RESUME),
        Phase.STEPPING,
        [EmitEvent, SetWeight, EmitEvent],
        expect={"step": 0, "weight": 10, "hold": False},
    ),
    "resume-cancels-pending-pause": Row(
        st(Phase.EVALUATING, hold=True),
        ctl(Command.RESUME),
        Phase.EVALUATING,
        [EmitEvent],
        expect={"hold": False},
    ),
    "resume-after-rollback-retries-revision": Row(
        st(Phase.ROLLED_BACK, rejected_revision="r2"),
        ctl(Command.RESUME),
        Phase.DEPLOYING,
        [DeployCanary, SetWeight, EmitEvent],
        expect={"reason": Reason.RETRY, "rejected_revision": None},
    ),
    "resume-without-pause-is-ignored": Row(
        st(Phase.ANALYZING), ctl(Command.RESUME), Phase.ANALYZING, [EmitEvent]
    ),
    "promote-while-analyzing-skips-steps": Row(
        st(Phase.ANALYZING),
        ctl(Command.PROMOTE),
        Phase.PROMOTING,
        [Promote, EmitEvent],
        expect={"reason": Reason.MANUAL_PROMOTE, "weight": 10},  # 100 once its whole fleet is ready
    ),
    "promote-while-paused": Row(
        st(Phase.PAUSED), ctl(Command.PROMOTE), Phase.PROMOTING, [Promote, EmitEvent]
    ),
    "promote-while-evaluating-skips-gate": Row(
        st(Phase.EVALUATING), ctl(Command.PROMOTE), Phase.PROMOTING, [CancelEvaluation, Promote, EmitEvent]
    ),
    "promote-before-canary-ready-is-ignored": Row(
        st(Phase.DEPLOYING), ctl(Command.PROMOTE), Phase.DEPLOYING, [EmitEvent]
    ),
    "promote-without-rollout-is-ignored": Row(
        st(Phase.PROMOTED), ctl(Command.PROMOTE), Phase.PROMOTED, [EmitEvent]
    ),
    "abort-while-stepping": Row(
        st(Phase.STEPPING),
        ctl(Command.ABORT),
        Phase.ROLLING_BACK,
        [SetWeight, Rollback, EmitEvent],
        expect={"decision": Decision.ABORTED, "reason": Reason.ABORTED},
    ),
    "abort-while-evaluating": Row(
        st(Phase.EVALUATING),
        ctl(Command.ABORT),
        Phase.ROLLING_BACK,
        [CancelEvaluation, SetWeight, Rollback, EmitEvent],
    ),
    "abort-while-paused": Row(
        st(Phase.PAUSED), ctl(Command.ABORT), Phase.ROLLING_BACK, [SetWeight, Rollback, EmitEvent]
    ),
    "abort-without-rollout-is-ignored": Row(
        st(Phase.ROLLED_BACK), ctl(Command.ABORT), Phase.ROLLED_BACK, [EmitEvent]
    ),
    "handled-control-is-not-replayed": Row(
        st(Phase.ANALYZING, handled_control="abort@1"), ctl(Command.ABORT), Phase.ANALYZING, []
    ),
}


@pytest.mark.parametrize("row", list(ROWS.values()), ids=list(ROWS))
def test_transition(row: Row) -> None:
    new, actions = advance(row.state, row.inputs, row.spec, T0 + row.after, row.settings)
    assert new.phase is row.phase
    assert [type(a) for a in actions] == row.actions
    for name, value in (row.expect or {}).items():
        assert getattr(new, name) == value, name
    if row.inputs.control is not None:
        assert new.handled_control == row.inputs.control.id


def test_every_phase_is_covered_by_a_row() -> None:
    assert {row.state.phase for row in ROWS.values()} == set(Phase)
    assert {row.phase for row in ROWS.values()} == set(Phase)


def test_advance_is_pure_and_repeatable() -> None:
    state, inputs = st(Phase.ANALYZING), obs(analysis=PASS_WINDOW)
    now = T0 + timedelta(minutes=5)
    assert advance(state, inputs, SPEC, now) == advance(state, inputs, SPEC, now)


def events(actions: tuple[Action, ...]) -> list[EmitEvent]:
    return [a for a in actions if isinstance(a, EmitEvent)]


# --- a promotion takes 100% only once the canary has its whole fleet ready --------------------------

PROMOTING_AT_50 = st(Phase.PROMOTING, step=1, weight=50, message="all 2 steps passed; promoting canary r2")


@pytest.mark.parametrize(
    ("state", "total", "ready", "after", "phase", "weight", "actions", "says"),
    [
        pytest.param(PROMOTING_AT_50, 4, 1, timedelta(seconds=10), Phase.PROMOTING, 50, [],
                     "waiting for the canary's whole fleet: 1/4 replicas ready; it takes 50% of the requests",
                     id="1-of-4-keeps-50"),
        pytest.param(PROMOTING_AT_50, 4, 3, timedelta(minutes=59), Phase.PROMOTING, 50, [],
                     "3/4 replicas ready", id="3-of-4-keeps-50-within-the-hour"),
        pytest.param(PROMOTING_AT_50, 4, 4, timedelta(seconds=10), Phase.PROMOTING, 100,
                     [SetWeight, EmitEvent], "whole fleet is ready (4/4 replicas): it takes 100% of the "
                     "requests (was 50%)", id="4-of-4-takes-100"),
        pytest.param(PROMOTING_AT_50, 3, 4, timedelta(seconds=10), Phase.PROMOTING, 100,
                     [SetWeight, EmitEvent], "(4/3 replicas)", id="more-than-the-fleet-after-a-scale-down"),
        pytest.param(PROMOTING_AT_50, 0, 1, timedelta(seconds=10), Phase.PROMOTING, 100,
                     [SetWeight, EmitEvent], "(1/1 replicas)", id="fleet-scaled-to-zero-still-one-replica"),
        pytest.param(PROMOTING_AT_50, 0, 0, timedelta(seconds=10), Phase.PROMOTING, 50, [],
                     "0/1 replicas ready", id="fleet-scaled-to-zero-none-ready"),
        pytest.param(replace(PROMOTING_AT_50, weight=0, step=0), 4, 1, timedelta(seconds=10), Phase.PROMOTING,
                     0, [], "1/4 replicas ready; it takes 0% of the requests", id="no-step-keeps-0"),
        pytest.param(replace(PROMOTING_AT_50, weight=0, step=0), 4, 4, timedelta(seconds=10), Phase.PROMOTING,
                     100, [SetWeight, EmitEvent], "(was 0%)", id="no-step-4-of-4-takes-100"),
        pytest.param(PROMOTING_AT_50, 4, 2, timedelta(hours=1, seconds=1), Phase.ROLLING_BACK, 0,
                     [SetWeight, Rollback, EmitEvent],
                     "promotion of canary r2: 2/4 replicas of its whole fleet were ready after 1:00:00 "
                     "(it took 50% of the requests); stable r1 keeps serving",
                     id="not-ready-within-the-hour"),
        pytest.param(replace(PROMOTING_AT_50, weight=100), 4, 1, timedelta(hours=2), Phase.PROMOTING, 100,
                     [], "all 2 steps passed", id="a-last-step-at-100-is-already-there-no-timeout"),
    ],
)
def test_a_promotion_keeps_its_weight_until_the_canary_has_its_whole_fleet_ready(
        state: RolloutState, total: int, ready: int, after: timedelta, phase: Phase, weight: int,
        actions: list[type], says: str) -> None:
    inputs = obs(total_replicas=total, canary_present=True, canary_ready_replicas=ready,
                 stable_revision_live="r1")
    new, done = advance(state, inputs, SPEC, T0 + after)
    assert new.phase is phase and new.weight == weight
    assert [type(a) for a in done] == actions
    assert says in new.message
    assert new.message.startswith("all 2 steps passed" if phase is Phase.PROMOTING else "promotion of")
    if SetWeight in actions and phase is Phase.PROMOTING:
        assert done[0] == SetWeight(100)
        event = events(done)[-1]
        assert (event.type, event.reason) == ("Normal", Reason.FLEET_READY)
    if phase is Phase.ROLLING_BACK:
        assert done[0] == SetWeight(0)
        assert events(done)[-1].type == "Warning" and events(done)[-1].reason is Reason.CANARY_NOT_READY
    # The same count on the next tick changes nothing (no status write, no event).
    if not actions:
        assert advance(new, inputs, SPEC, T0 + after + timedelta(seconds=1)) == (new, ())


@pytest.mark.parametrize(
    ("state", "inputs", "spec", "weight"),
    [
        pytest.param(st(Phase.EVALUATING), obs(evaluation=PASS_EVAL), NO_STEPS, 0,
                     id="no-steps-gate-passed-0"),
        pytest.param(st(Phase.DEPLOYING), obs(canary_ready_replicas=1), replace(NO_EVAL, steps=()), 0,
                     id="no-steps-no-evaluation-0"),
        pytest.param(st(Phase.EVALUATING), ctl(Command.PROMOTE), SPEC, 0, id="promoted-while-evaluating-0"),
        pytest.param(st(Phase.PAUSED, weight=0), ctl(Command.PROMOTE), SPEC, 0,
                     id="promoted-while-paused-before-traffic-0"),
        pytest.param(st(Phase.DEPLOYING), obs(), None, 0, id="gate-removed-while-deploying-0"),
        pytest.param(st(Phase.STEPPING, weight=10), ctl(Command.PROMOTE), SPEC, 10,
                     id="promoted-while-stepping-its-weight"),
        pytest.param(st(Phase.PAUSED, step=1, weight=50), ctl(Command.PROMOTE), SPEC, 50,
                     id="promoted-while-paused-its-weight"),
        pytest.param(st(Phase.ANALYZING, step=1, weight=50), obs(analysis=PASS_WINDOW), SPEC, 50,
                     id="last-step-passed-its-weight"),
        pytest.param(st(Phase.ANALYZING, weight=100), obs(analysis=PASS_WINDOW),
                     replace(SPEC, steps=(Step(100, 300),)), 100, id="last-step-at-100"),
        pytest.param(st(Phase.ANALYZING, step=1, weight=50), obs(), replace(SPEC, steps=(Step(10, 300),)), 50,
                     id="steps-removed-the-weight-it-had"),
    ],
)
def test_the_promotion_starts_at_the_weight_the_canary_had(state: RolloutState, inputs: Inputs,
                                                           spec: RolloutSpec | None, weight: int) -> None:
    new, done = advance(state, inputs, spec, T0 + timedelta(minutes=30))
    assert new.phase is Phase.PROMOTING and new.weight == weight
    assert Promote in [type(a) for a in done] and SetWeight not in [type(a) for a in done]
    assert replicas_for(new, 4) == (4, 4)  # the whole fleet beside stable's, whatever the weight


def test_a_promotion_waits_for_the_fleet_across_restarts_and_keeps_its_cause_in_history() -> None:
    script = [
        (timedelta(minutes=0), ctl(Command.PROMOTE, total_replicas=4, canary_present=True,
                                   canary_ready_replicas=1, stable_revision_live="r1")),
        (timedelta(minutes=1), ctl(Command.PROMOTE, total_replicas=4, canary_present=True,
                                   canary_ready_replicas=1, stable_revision_live="r1")),
        (timedelta(minutes=2), ctl(Command.PROMOTE, total_replicas=4, canary_present=True,
                                   canary_ready_replicas=3, stable_revision_live="r1")),
        (timedelta(minutes=3), ctl(Command.PROMOTE, total_replicas=4, canary_present=True,
                                   canary_ready_replicas=4, stable_revision_live="r1")),
        (timedelta(minutes=4), ctl(Command.PROMOTE, total_replicas=4, canary_present=False,
                                   canary_ready_replicas=4, stable_revision_live="r2")),
    ]
    straight, actions = run(st(Phase.ANALYZING, step=1, weight=50), SPEC, script)
    restarted, _ = run(st(Phase.ANALYZING, step=1, weight=50), SPEC, script, restart=True)
    assert straight == restarted and straight.phase is Phase.PROMOTED
    assert [a.weight for a in actions if isinstance(a, SetWeight)] == [100]
    assert [e.reason for e in events(tuple(actions))] == [Reason.MANUAL_PROMOTE, Reason.FLEET_READY,
                                                          Reason.PROMOTED]
    entry = straight.history[-1]
    assert entry.reason is Reason.MANUAL_PROMOTE
    assert entry.message.startswith("revision r2 is stable (was r1): promoted by a user; the remaining steps "
                                    "skipped; the canary's whole fleet is ready (4/4 replicas)")
    assert "waiting" not in entry.message


def test_rollback_event_and_status_say_why_the_revision_is_not_live() -> None:
    state, _ = advance(st(Phase.EVALUATING), obs(evaluation=FAIL_EVAL), SPEC, T0)
    state, actions = advance(state, obs(), SPEC, T0 + timedelta(seconds=30))
    assert state.phase is Phase.ROLLED_BACK
    assert "r2 is not live" in state.message and "evaluation gate failed: worse" in state.message
    assert events(actions)[0].type == "Warning"
    entry = state.history[-1]
    assert (entry.revision, entry.decision, entry.eval_score, entry.baseline_score) == (
        "r2",
        Decision.ROLLED_BACK,
        0.7,
        0.88,
    )


# --- evaluations without a verdict ------------------------------------------------------------


def everything_failed(cases: int = 200) -> EvalResult:
    """The gate on a suite where every request of both revisions failed (a base model answering 404)."""
    outcomes = [PairedOutcome(f"c{i}", False, False, canary_error=True, stable_error=True)
                for i in range(cases)]
    return EvalResult.from_gate(evaluate_gate(outcomes, min_score=0.0))


@pytest.mark.parametrize("spec", [SPEC, NO_STEPS], ids=["with-steps", "without-steps"])
@pytest.mark.parametrize(
    ("attempts", "phase", "actions"),
    [
        pytest.param(1, Phase.EVALUATING, [StartEvaluation, EmitEvent], id="first-attempt-retried"),
        pytest.param(2, Phase.EVALUATING, [StartEvaluation, EmitEvent], id="second-attempt-retried"),
        pytest.param(3, Phase.ROLLING_BACK, [SetWeight, Rollback, EmitEvent], id="last-attempt-rolls-back"),
    ],
)
def test_an_evaluation_without_a_verdict_is_tried_again_then_rolled_back(
        spec: RolloutSpec, attempts: int, phase: Phase, actions: list[type]) -> None:
    result = everything_failed()
    assert result.errored and not result.passed
    new, done = advance(st(Phase.EVALUATING, evaluation_attempts=attempts), obs(evaluation=result), spec, T0)
    assert new.phase is phase and [type(a) for a in done] == actions
    assert new.reason is Reason.EVALUATION_ERRORS and new.weight == 0
    assert (new.eval_canary_errors, new.eval_stable_errors, new.eval_cases) == (200, 200, 0)
    warning = events(done)[-1]
    assert warning.type == "Warning" and warning.reason is Reason.EVALUATION_ERRORS
    assert "canary 200, stable 200" in warning.message
    if phase is Phase.EVALUATING:
        assert new.evaluation_attempts == attempts + 1
        assert done[0] == StartEvaluation("r2", attempts + 1)
    status = new.to_status()["canary"]
    assert (status["canaryErrors"], status["stableErrors"]) == (200, 200)
    assert status["reason"] == "EvaluationErrors"


def test_no_verdict_is_never_a_pass() -> None:
    with pytest.raises(ValueError, match="no verdict"):
        EvalResult(passed=True, reason="x", canary_score=1.0, errored=True)


# --- the gate's power ---------------------------------------------------------------------------

DEFAULT_MARGIN = replace(SPEC, max_regression=0.02)  # SPEC's gate with the API defaults
ASSUMED_CHECK = assess(200, max_regression=0.02, confidence=0.95, measured_discordance=None)
MEASURED_2PCT = HistoryEntry("r1", Decision.PROMOTED, Reason.STEPS_COMPLETE, "ok", T0, T0, 0.9, 0.9, -0.01,
                             discordance=0.02)


@pytest.mark.parametrize(
    ("state", "inputs", "spec", "phase", "actions", "needed", "measured"),
    [
        pytest.param(st(Phase.DEPLOYING), obs(suite_cases=200), DEFAULT_MARGIN, Phase.DEPLOYING, [EmitEvent],
                     1565, False, id="underpowered-at-the-assumed-discordance-warns"),
        pytest.param(st(Phase.DEPLOYING, history=(MEASURED_2PCT,)), obs(suite_cases=200), DEFAULT_MARGIN,
                     Phase.DEPLOYING, [EmitEvent], 401, True, id="measured-by-the-last-rollout"),
        pytest.param(st(Phase.DEPLOYING), obs(suite_cases=3000), DEFAULT_MARGIN, Phase.DEPLOYING, [],
                     None, False, id="large-suite-no-warning"),
        pytest.param(st(Phase.DEPLOYING), obs(canary_ready_replicas=1, suite_cases=200), DEFAULT_MARGIN,
                     Phase.EVALUATING, [EmitEvent, StartEvaluation, EmitEvent], 1565, False,
                     id="checked-in-the-tick-the-canary-is-ready"),
        pytest.param(st(Phase.EVALUATING), obs(evaluation_running=True, suite_cases=200), DEFAULT_MARGIN,
                     Phase.EVALUATING, [EmitEvent], 1565, False, id="checked-while-evaluating"),
    ],
)
def test_the_power_check_warns_once_and_never_blocks(
        state: RolloutState, inputs: Inputs, spec: RolloutSpec, phase: Phase, actions: list[type],
        needed: int | None, measured: bool) -> None:
    new, done = advance(state, inputs, spec, T0 + timedelta(seconds=10))
    assert new.phase is phase and [type(a) for a in done] == actions
    assert new.power is not None and new.power.cases == inputs.suite_cases
    assert new.power.cases_needed == needed and new.power.measured is measured
    assert new.power.underpowered is (needed is not None)
    if needed is not None:
        warning = events(done)[0]
        assert (warning.type, warning.reason) == ("Warning", Reason.SUITE_UNDERPOWERED)
        assert f"{needed:,} cases or more would give 80%" in warning.message
    # Once checked, the next tick says nothing more.
    again, more = advance(new, replace(inputs, canary_ready_replicas=0, evaluation_running=True), spec,
                          T0 + timedelta(seconds=20))
    assert again.power == new.power and not events(more)


@pytest.mark.parametrize(
    ("state", "inputs", "spec"),
    [
        pytest.param(st(Phase.DEPLOYING), obs(), DEFAULT_MARGIN, id="suite-size-not-known-yet"),
        pytest.param(st(Phase.DEPLOYING), obs(suite_cases=200), replace(NO_EVAL, max_regression=0.02),
                     id="no-evaluation-gate"),
        pytest.param(st(Phase.ANALYZING), obs(suite_cases=200), DEFAULT_MARGIN, id="past-the-gate"),
    ],
)
def test_no_power_check(state: RolloutState, inputs: Inputs, spec: RolloutSpec) -> None:
    new, done = advance(state, inputs, spec, T0 + timedelta(seconds=10))
    assert new.power is None and not any(e.reason is Reason.SUITE_UNDERPOWERED for e in events(done))


@pytest.mark.parametrize(
    ("passed", "lower_bound", "phase", "note"),
    [
        pytest.param(False, -0.05, Phase.ROLLING_BACK, True, id="refused-on-the-margin-says-underpowered"),
        pytest.param(False, -0.01, Phase.ROLLING_BACK, False, id="refused-by-the-floor-no-note"),
        pytest.param(True, -0.01, Phase.STEPPING, False, id="passed"),
    ],
)
def test_the_evaluation_rechecks_power_at_the_measured_discordance(passed: bool, lower_bound: float,
                                                                  phase: Phase, note: bool) -> None:
    result = EvalResult(passed=passed, reason="numbers", canary_score=0.8, stable_score=0.81,
                        lower_bound=lower_bound, cases=200, suite_cases=200, discordance=0.06)
    new, _ = advance(st(Phase.EVALUATING, power=ASSUMED_CHECK), obs(evaluation=result), DEFAULT_MARGIN, T0)
    assert new.phase is phase and new.eval_discordance == 0.06
    assert new.power is not None and new.power.measured and new.power.discordance == 0.06
    assert new.power.cases_needed == 965
    assert ("suite underpowered" in new.message and "965 cases" in new.message) is note


def test_a_finished_rollout_hands_its_discordance_to_the_next() -> None:
    result = EvalResult(passed=True, reason="ok", canary_score=0.9, stable_score=0.9, lower_bound=-0.01,
                        cases=200, suite_cases=200, discordance=0.03)
    state, _ = advance(st(Phase.EVALUATING), obs(evaluation=result), NO_STEPS, T0)
    state, _ = advance(state, obs(canary_ready_replicas=1), NO_STEPS, T0 + timedelta(seconds=30))
    state, _ = advance(state, obs(stable_revision_live="r2"), NO_STEPS, T0 + timedelta(minutes=1))
    assert state.phase is Phase.PROMOTED and state.history[-1].discordance == 0.03
    state, _ = advance(state, obs(desired_revision="r3"), NO_STEPS, T0 + timedelta(minutes=2))
    state, _ = advance(state, obs(desired_revision="r3", suite_cases=500), DEFAULT_MARGIN,
                       T0 + timedelta(minutes=3))
    assert state.power is not None and state.power.measured and state.power.discordance == 0.03


# --- scenarios: drive the machine as a handler would ------------------------------------------


def run(
    state: RolloutState,
    spec: RolloutSpec | None,
    script: list[tuple[timedelta, Inputs]],
    restart: bool = False,
) -> tuple[RolloutState, list[Action]]:
    """Feed inputs in order; with ``restart``, round-trip the state through JSON status between ticks."""
    performed: list[Action] = []
    for offset, inputs in script:
        if restart:
            state = RolloutState.from_status(json.loads(json.dumps(state.to_status())))
        state, actions = advance(state, inputs, spec, T0 + offset)
        performed += actions
    return state, performed


def happy_script() -> list[tuple[timedelta, Inputs]]:
    m = timedelta(minutes=1)
    return [
        (0 * m, obs(desired_revision="r1")),
        (1 * m, obs()),  # spec moved to r2
        (2 * m, obs(canary_present=True, canary_ready_replicas=1)),
        (3 * m, obs(canary_present=True, canary_ready_replicas=1, evaluation_running=True)),
        (9 * m, obs(canary_present=True, canary_ready_replicas=1, evaluation=PASS_EVAL)),
        (10 * m, obs(total_replicas=4, canary_present=True, canary_ready_replicas=1)),
        (15 * m, obs(canary_present=True, canary_ready_replicas=1)),  # window over → RunAnalysis
        (15 * m, obs(canary_present=True, canary_ready_replicas=1, analysis=PASS_WINDOW)),
        (16 * m, obs(total_replicas=4, canary_present=True, canary_ready_replicas=2)),
        (26 * m, obs(canary_present=True, canary_ready_replicas=2, analysis=PASS_WINDOW)),
        (27 * m, obs(total_replicas=4, canary_present=True, canary_ready_replicas=2,
                     stable_revision_live="r1")),  # Promoting at 50%, the canary scaling to 4
        (28 * m, obs(total_replicas=4, canary_present=True, canary_ready_replicas=4,
                     stable_revision_live="r1")),  # its whole fleet is ready: 100%
        (29 * m, obs(canary_present=False, stable_revision_live="r2")),
    ]


@pytest.mark.parametrize("restart", [False, True], ids=["straight", "restart-every-tick"])
def test_happy_path_promotes_through_every_step(restart: bool) -> None:
    state, actions = run(RolloutState(), SPEC, happy_script(), restart=restart)
    assert state.phase is Phase.PROMOTED and state.stable_revision == "r2"
    weights = [a.weight for a in actions if isinstance(a, SetWeight)]
    assert weights == [0, 10, 50, 100]
    first_eval = next(i for i, a in enumerate(actions) if isinstance(a, StartEvaluation))
    first_traffic = next(i for i, a in enumerate(actions) if isinstance(a, SetWeight) and a.weight > 0)
    assert first_eval < first_traffic  # evaluation before any user traffic
    assert [type(a) for a in actions].count(RunAnalysis) == 1
    assert state.history[-1].decision is Decision.PROMOTED


def test_restart_mid_rollout_reaches_the_same_decision() -> None:
    script = happy_script()[:7] + [
        (timedelta(minutes=15), obs(canary_present=True, canary_ready_replicas=1, analysis=FAIL_WINDOW)),
        (timedelta(minutes=16), obs()),
    ]
    straight, _ = run(RolloutState(), SPEC, script)
    restarted, _ = run(RolloutState(), SPEC, script, restart=True)
    assert straight == restarted
    assert straight.phase is Phase.ROLLED_BACK and straight.reason is Reason.ANALYSIS_FAILED


def test_status_round_trip_is_exact() -> None:
    entry = HistoryEntry(
        "r0", Decision.PROMOTED, Reason.STEPS_COMPLETE, "ok", T0, T0 + timedelta(hours=1), 0.9, 0.88, -0.01,
        discordance=0.04,
    )
    state = st(
        Phase.ANALYZING,
        window_extensions=2,
        eval_score=0.91,
        baseline_score=0.9,
        eval_lower_bound=-0.012,
        eval_cases=300,
        failing_case_ids=("a", "b"),
        hold=False,
        handled_control="pause@x",
        rejected_revision="r0",
        reason=Reason.WINDOW_EXTENDED,
        message="m",
        history=(entry,),
        eval_canary_errors=3,
        eval_stable_errors=1,
        eval_discordance=0.045,
        power=PowerCheck(cases=300, max_regression=0.02, confidence=0.95, discordance=0.05, measured=True,
                         pass_probability=0.42, cases_needed=850),
    )
    status = json.loads(json.dumps(state.to_status()))
    assert set(status) == {"stable", "canary", "rolloutHistory"}
    assert RolloutState.from_status(status) == state
    assert RolloutState.from_status(None) == RolloutState()
    # What the status carries is what the API accepts.
    CanaryStatus.model_validate({k: v for k, v in status["canary"].items() if v is not None})
    RolloutRecord.model_validate({k: v for k, v in status["rolloutHistory"][0].items() if v is not None})


def test_history_is_bounded() -> None:
    state = RolloutState(stable_revision="r0")
    for i in range(1, 15):
        state, _ = advance(state, obs(desired_revision=f"r{i}"), None, T0 + timedelta(minutes=i))
    assert len(state.history) == DEFAULT_SETTINGS.history_limit
    assert state.history[-1].revision == "r14"


def test_gate_result_feeds_the_machine() -> None:
    gate = evaluate_gate(outcomes_from_pairs([(True, True)] * 280 + [(False, True)] * 20), min_score=0.8)
    result = EvalResult.from_gate(gate)
    state, _ = advance(st(Phase.EVALUATING), obs(evaluation=result), SPEC, T0)
    assert state.phase is Phase.ROLLING_BACK
    assert state.eval_score == pytest.approx(280 / 300) and state.baseline_score == 1.0


# --- helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "weight", "canary"),
    [
        pytest.param(10, 0, 0, id="no-traffic"),
        pytest.param(10, 100, 10, id="all-traffic"),
        pytest.param(10, 10, 1, id="exact-10pct"),
        pytest.param(10, 25, 3, id="2.5-rounds-up"),
        pytest.param(4, 10, 1, id="at-least-one"),
        pytest.param(4, 99, 4, id="99pct-of-4"),
        pytest.param(3, 50, 2, id="1.5-rounds-up"),
        pytest.param(1, 10, 1, id="single-replica-fleet"),
        pytest.param(2, 10, 1, id="10pct-of-2-is-one-not-half-the-fleet"),
        pytest.param(0, 50, 0, id="scaled-to-zero"),
        pytest.param(20, 33, 7, id="20-at-33pct"),
        pytest.param(20, 35, 7, id="exactly-7"),
    ],
)
def test_canary_replicas(total: int, weight: int, canary: int) -> None:
    assert canary_replicas(total, weight) == canary


def test_the_canary_has_at_least_its_share_and_less_than_one_replica_more() -> None:
    for total in range(1, 41):
        for weight in range(1, 101):
            canary = canary_replicas(total, weight)
            share = total * weight / 100
            assert share <= canary < share + 1


@pytest.mark.parametrize(("total", "weight"), [(-1, 10), (4, -1), (4, 101)])
def test_canary_replicas_refuses_nonsense(total: int, weight: int) -> None:
    with pytest.raises(ValueError, match="bad split"):
        canary_replicas(total, weight)


@pytest.mark.parametrize(
    ("state", "split"),
    [
        pytest.param(st(Phase.EVALUATING), (6, 1), id="evaluation-replica-beside-stable"),
        pytest.param(st(Phase.PAUSED, weight=0), (6, 1), id="paused-before-traffic"),
        pytest.param(st(Phase.ANALYZING, weight=50), (6, 3), id="step-stable-keeps-its-fleet"),
        pytest.param(st(Phase.STEPPING, weight=10), (6, 1), id="small-step-one-replica"),
        pytest.param(st(Phase.PAUSED, weight=34), (6, 3), id="paused-at-a-step"),
        pytest.param(st(Phase.ANALYZING, weight=100), (6, 6), id="a-100pct-step-keeps-stable"),
        pytest.param(st(Phase.PROMOTING, weight=100), (6, 6), id="promoting"),
        pytest.param(st(Phase.PROMOTING, weight=50), (6, 6), id="promoting-at-50-scales-to-the-whole-fleet"),
        pytest.param(st(Phase.PROMOTING, weight=0), (6, 6), id="promoting-without-a-step"),
        pytest.param(st(Phase.ROLLING_BACK), (6, 0), id="rolling-back"),
        pytest.param(st(Phase.IDLE), (6, 0), id="idle"),
    ],
)
def test_replicas_for(state: RolloutState, split: tuple[int, int]) -> None:
    assert replicas_for(state, 6) == split


def test_a_promoted_canary_runs_one_replica_when_the_fleet_is_scaled_to_zero() -> None:
    assert replicas_for(st(Phase.PROMOTING, weight=50), 0) == (0, 1)


@pytest.mark.parametrize(
    ("value", "control"),
    [
        ("promote@2026-11-26T10:00:00Z", ManualControl(Command.PROMOTE, "promote@2026-11-26T10:00:00Z")),
        ("Pause", ManualControl(Command.PAUSE, "Pause")),
        ("explode@1", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_control(value: str | None, control: ManualControl | None) -> None:
    assert parse_control(value) == control


def test_window_end_counts_extensions_with_a_minimum() -> None:
    quick = rollout_spec({"steps": [{"weight": 10, "pause": "0s"}],
                          "evaluation": {"suiteRef": {"configMap": "suite"},
                                         "analysis": {"maxErrorRate": 0.05}}})
    state = st(Phase.ANALYZING, window_extensions=2)
    assert window_end(state, quick) == T0 + timedelta(minutes=2)
    assert window_end(state, SPEC) == T0 + timedelta(minutes=15)
