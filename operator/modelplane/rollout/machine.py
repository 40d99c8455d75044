"""The rollout state machine: pure ``advance(state, inputs, spec, now) -> (state, actions)``.

The handler observes the world (the desired revision from the spec, the canary's readiness, a
finished evaluation, an analysis verdict, a manual control), calls ``advance``, executes the returned
actions in order and writes the new state to status (``RolloutState.to_status``). The state holds
everything needed to continue, so an operator restart resumes exactly where it stopped
(``RolloutState.from_status``). One call makes at most one transition; the handler calls again on
its next tick (or at once, while actions keep coming).

Phases::

    Idle/Promoted/RolledBack/Aborted --revision change--> Deploying --canary ready--> Evaluating
    Evaluating --gate passed--> Stepping(0) --canary replicas ready--> Analyzing --window passed-->
        Stepping(i+1) … --last step passed--> Promoting --stable serves new revision--> Promoted
    Evaluating --gate failed/error/timeout--> RollingBack --canary gone--> RolledBack
    Evaluating --too many request errors (no verdict)--> Evaluating (a new attempt)
        --still no verdict after the last attempt--> RollingBack (EvaluationErrors)
    Analyzing --fail--> RollingBack;  --inconclusive--> Analyzing (window extended, bounded)
        --still inconclusive--> Paused (a human decides; ``settings.on_inconclusive`` can roll back)
    any active phase --abort--> RollingBack --canary gone--> Aborted
    Stepping/Analyzing --pause--> Paused --resume--> Stepping(current step, fresh window)
    Evaluating/Stepping/Analyzing/Paused --promote--> Promoting (remaining steps skipped)
    Promoting: the canary scales to the whole fleet at the weight it had (the last step's; 0 when
        it had none) --whole fleet ready--> weight 100 --stable serves new revision--> Promoted
        --fleet not ready within ``deploy_timeout``--> RollingBack (CanaryNotReady)

While Deploying or Evaluating, once the suite's size is known (``Inputs.suite_cases``), the machine
checks the gate's power (``power.assess``: how often it would pass a canary exactly as good as
stable) and warns with ``SuiteUnderpowered`` when that is under 80%; it never blocks on it.

Decisions documented in docs/rollouts.md: a new revision during a rollout supersedes the canary (it
is replaced and re-evaluated; stable never stops serving); a revision that was rolled back is not
retried until the spec changes or a ``resume`` control asks for a retry; a spec without ``rollout``
switches directly; removing ``rollout`` during a rollout promotes the canary (the user dropped the
gate); a spec that returns to the stable revision aborts the canary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from modelplane.rollout import power
from modelplane.rollout.analysis import AnalysisResult, Outcome
from modelplane.rollout.power import PowerCheck
from modelplane.rollout.spec import RolloutSpec
from modelplane.rollout.stats import GateResult

#: The annotation that carries manual controls: ``<command>[@<id>]`` (see ``parse_control``).
CONTROL_ANNOTATION = "modelplane.dev/rollout-control"


class Phase(StrEnum):
    IDLE = "Idle"
    DEPLOYING = "Deploying"
    EVALUATING = "Evaluating"
    STEPPING = "Stepping"
    ANALYZING = "Analyzing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"


#: A rollout is under way: a canary exists and may take traffic.
ACTIVE = frozenset({Phase.DEPLOYING, Phase.EVALUATING, Phase.STEPPING, Phase.ANALYZING, Phase.PAUSED})
#: No rollout under way; the next revision change starts one.
SETTLED = frozenset({Phase.IDLE, Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED})


class Decision(StrEnum):
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"
    SUPERSEDED = "Superseded"
    DIRECT = "Direct"  #: switched without a gate (no ``spec.rollout``)


class Reason(StrEnum):
    """Condition and Event reasons; each says why the phase is what it is."""

    INITIAL_DEPLOY = "InitialDeploy"
    DIRECT_SWITCH = "DirectSwitch"
    ROLLOUT_STARTED = "RolloutStarted"
    RETRY = "RolloutRetried"
    CANARY_NOT_READY = "CanaryNotReady"
    EVALUATION_STARTED = "EvaluationStarted"
    EVALUATION_PASSED = "EvaluationPassed"
    EVALUATION_FAILED = "EvaluationFailed"
    EVALUATION_ERROR = "EvaluationError"
    #: Too many suite requests failed (on either side) for the gate to compare: no verdict.
    EVALUATION_ERRORS = "EvaluationErrors"
    #: The suite is too small for its margin and confidence to pass an equal canary (a warning).
    SUITE_UNDERPOWERED = "SuiteUnderpowered"
    EVALUATION_TIMEOUT = "EvaluationTimeout"
    STEP_STARTED = "StepStarted"
    WINDOW_STARTED = "AnalysisWindowStarted"
    WINDOW_EXTENDED = "AnalysisWindowExtended"
    ANALYSIS_PASSED = "AnalysisPassed"
    ANALYSIS_FAILED = "AnalysisFailed"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    PAUSED = "PausedByUser"
    PAUSE_PENDING = "PausePending"
    RESUMED = "Resumed"
    MANUAL_PROMOTE = "PromotedByUser"
    ABORTED = "AbortedByUser"
    SUPERSEDED = "Superseded"
    SPEC_REVERTED = "SpecReverted"
    GATE_REMOVED = "RolloutSpecRemoved"
    STEPS_COMPLETE = "StepsComplete"
    #: The promoted canary has its whole fleet ready: it takes 100% of the requests.
    FLEET_READY = "PromotedFleetReady"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    CONTROL_IGNORED = "ControlIgnored"


class Command(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ABORT = "abort"


class InconclusivePolicy(StrEnum):
    PAUSE = "pause"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class ManualControl:
    """A control from the annotation; ``id`` makes it act once (a restart does not replay it)."""

    command: Command
    id: str


def parse_control(value: str | None) -> ManualControl | None:
    """``"promote@2026-11-26T10:00:00Z"`` → ManualControl; the whole value is the id. None if invalid."""
    if not value:
        return None
    command = value.split("@", 1)[0].strip().lower()
    try:
        return ManualControl(Command(command), value.strip())
    except ValueError:
        return None


@dataclass(frozen=True)
class MachineSettings:
    """Operator-level knobs (not in the CRD); defaults sized for multi-minute model loads."""

    #: The canary not ready (Deploying), a step's canary replicas (Stepping), or the promoted canary's
    #: whole fleet (Promoting, before it takes 100%): each ends in a rollback after this long.
    deploy_timeout: timedelta = timedelta(hours=1)
    evaluation_timeout: timedelta = timedelta(hours=1)  #: one evaluation attempt
    max_evaluation_attempts: int = 3  #: runner errors or lost runs (operator restarts) retried this often
    max_window_extensions: int = 3
    min_extension: timedelta = timedelta(minutes=1)  #: an extension lasts max(step pause, this)
    on_inconclusive: InconclusivePolicy = InconclusivePolicy.PAUSE
    history_limit: int = 10


DEFAULT_SETTINGS = MachineSettings()


@dataclass(frozen=True)
class EvalResult:
    """The evaluation's verdict as the machine records it (from the paired gate or a custom Job)."""

    passed: bool
    reason: str
    canary_score: float
    stable_score: float | None = None
    lower_bound: float | None = None
    cases: int = 0  #: cases compared (a request error on either side leaves a case out)
    failing_case_ids: tuple[str, ...] = ()
    #: Too many request errors to compare: no verdict (never a pass); the machine tries again.
    errored: bool = False
    canary_errors: int = 0  #: cases whose canary request failed
    stable_errors: int = 0  #: cases whose stable request failed
    suite_cases: int = 0  #: cases in the suite (compared or not); 0 when unknown (a custom evaluator)
    discordance: float | None = None  #: share of compared cases the two revisions answered differently

    def __post_init__(self) -> None:
        if self.passed and self.errored:
            raise ValueError("an evaluation with no verdict cannot pass")

    @classmethod
    def from_gate(cls, gate: GateResult) -> EvalResult:
        return cls(passed=gate.passed, reason=gate.reason, canary_score=gate.canary_score,
                   stable_score=gate.stable_score, lower_bound=gate.lower_bound, cases=gate.n,
                   failing_case_ids=gate.failing_case_ids, errored=gate.errored,
                   canary_errors=gate.canary_errors, stable_errors=gate.stable_errors,
                   suite_cases=gate.total, discordance=gate.discordance)


@dataclass(frozen=True)
class Inputs:
    """What the handler observed this tick."""

    desired_revision: str | None = None  #: ``spec.revision_fingerprint`` of the current spec
    #: What people call the desired revision (``model.revision``); carried beside the fingerprint
    #: into status and history, never used to decide.
    desired_label: str | None = None
    total_replicas: int = 1  #: the autoscaler's total for canary + stable
    canary_present: bool = False  #: a canary workload exists
    canary_ready_replicas: int = 0
    stable_revision_live: str | None = None  #: the revision the stable workload serves, once ready
    evaluation: EvalResult | None = None  #: a finished evaluation of the current canary
    evaluation_error: str | None = None  #: the evaluation could not run (suite missing, runner died…)
    evaluation_running: bool = False  #: the handler has an evaluation of the canary in flight
    analysis: AnalysisResult | None = None  #: the verdict for the window that ``RunAnalysis`` asked for
    analysis_window_open: bool = True  #: the handler holds the window's start snapshot
    control: ManualControl | None = None
    #: Cases in the evaluation suite, once the handler has read it (None: unknown, or no suite).
    suite_cases: int | None = None


# --- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeployCanary:
    """Create (or replace) the canary workload at ``revision``: 1 replica at weight 0, which no
    client request reaches (the gateway sends it none, the Service does not select it); the
    evaluation reaches it by pod IP."""

    revision: str


@dataclass(frozen=True)
class SetWeight:
    """Send ``weight`` percent of the requests to the canary (``status.canary.weight``, which the
    gateway follows), on ``canary_replicas(total, weight)`` replicas beside stable's full fleet (on the
    whole fleet while Promoting, where 100 comes once that fleet is ready)."""

    weight: int


@dataclass(frozen=True)
class StartEvaluation:
    revision: str
    attempt: int


@dataclass(frozen=True)
class CancelEvaluation:
    revision: str


@dataclass(frozen=True)
class BeginAnalysisWindow:
    """Take the window's start snapshot of canary and stable metrics (and keep it across restarts)."""

    step: int


@dataclass(frozen=True)
class RunAnalysis:
    """The window is over: analyse it and call ``advance`` again with ``Inputs.analysis``."""

    step: int


@dataclass(frozen=True)
class Promote:
    """Make ``revision`` the stable one (without dropping requests) and remove the old stable."""

    revision: str


@dataclass(frozen=True)
class Rollback:
    """Send all traffic to stable and remove the canary workload of ``revision``."""

    revision: str


@dataclass(frozen=True)
class SwitchStable:
    """No gate: render the stable workload at ``revision`` (ordinary rolling update)."""

    revision: str


@dataclass(frozen=True)
class HistoryEntry:
    revision: str
    decision: Decision
    reason: Reason
    message: str
    started_at: datetime | None
    finished_at: datetime
    eval_score: float | None = None
    baseline_score: float | None = None
    lower_bound: float | None = None
    label: str | None = None  #: the revision's name for people (``model.revision``)
    discordance: float | None = None  #: measured by its evaluation; the next rollout's power check uses it


@dataclass(frozen=True)
class RecordHistory:
    """Also written to the report ConfigMap / metrics; the state's history already holds it."""

    entry: HistoryEntry


@dataclass(frozen=True)
class EmitEvent:
    type: str  #: Normal | Warning
    reason: Reason
    message: str


Action = (DeployCanary | SetWeight | StartEvaluation | CancelEvaluation | BeginAnalysisWindow | RunAnalysis
          | Promote | Rollback | SwitchStable | RecordHistory | EmitEvent)


# --- state ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutState:
    phase: Phase = Phase.IDLE
    stable_revision: str | None = None
    canary_revision: str | None = None
    step: int = 0  #: index into ``spec.steps`` of the current step
    weight: int = 0  #: percent of traffic the canary is asked to take
    started_at: datetime | None = None  #: when this rollout began
    phase_since: datetime | None = None  #: when the phase (or the current evaluation attempt) began
    step_started_at: datetime | None = None  #: start of the analysis window of the current step
    window_extensions: int = 0
    evaluation_attempts: int = 0
    eval_score: float | None = None
    baseline_score: float | None = None
    eval_lower_bound: float | None = None
    eval_cases: int = 0
    failing_case_ids: tuple[str, ...] = ()  #: the first 20; the report ConfigMap has all
    eval_canary_errors: int = 0  #: cases of the last evaluation whose canary request failed
    eval_stable_errors: int = 0  #: the same on stable
    eval_discordance: float | None = None
    power: PowerCheck | None = None  #: the gate's power for this canary's suite, once checked
    decision: Decision | None = None  #: the outcome being executed or reached
    reason: Reason | None = None
    message: str = ""
    hold: bool = False  #: pause requested before the first traffic step
    rejected_revision: str | None = None  #: rolled back or aborted; not retried until the spec changes
    handled_control: str | None = None
    history: tuple[HistoryEntry, ...] = field(default=())
    #: Names for people of the fingerprints above (``model.revision``); they ride along, never decide.
    stable_label: str | None = None
    canary_label: str | None = None
    rejected_label: str | None = None

    def to_status(self) -> dict[str, Any]:
        """``{"stable": …, "canary": …, "rolloutHistory": […]}`` — JSON-ready, camelCase."""
        canary = {
            "phase": self.phase.value,
            "fingerprint": self.canary_revision,
            "revision": self.canary_label,
            "weight": self.weight,
            "step": self.step,
            "startedAt": _iso(self.started_at),
            "phaseSince": _iso(self.phase_since),
            "stepStartedAt": _iso(self.step_started_at),
            "windowExtensions": self.window_extensions,
            "evaluationAttempts": self.evaluation_attempts,
            "evalScore": self.eval_score,
            "baselineScore": self.baseline_score,
            "lowerBound": self.eval_lower_bound,
            "cases": self.eval_cases,
            "failingCases": list(self.failing_case_ids),
            "canaryErrors": self.eval_canary_errors,
            "stableErrors": self.eval_stable_errors,
            "discordance": self.eval_discordance,
            "power": _power_status(self.power),
            "decision": self.decision.value if self.decision else None,
            "reason": self.reason.value if self.reason else None,
            "message": self.message,
            "hold": self.hold,
            "rejectedFingerprint": self.rejected_revision,
            "rejectedRevision": self.rejected_label,
            "handledControl": self.handled_control,
        }
        history = [
            {
                "fingerprint": h.revision,
                "revision": h.label,
                "decision": h.decision.value,
                "reason": h.reason.value,
                "message": h.message,
                "startedAt": _iso(h.started_at),
                "finishedAt": _iso(h.finished_at),
                "evalScore": h.eval_score,
                "baselineScore": h.baseline_score,
                "lowerBound": h.lower_bound,
                "discordance": h.discordance,
            }
            for h in self.history
        ]
        stable = {"fingerprint": self.stable_revision, "revision": self.stable_label}
        return {"stable": stable, "canary": canary, "rolloutHistory": history}

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> RolloutState:
        """The inverse of ``to_status``; missing pieces take their defaults (a fresh object)."""
        status = status or {}
        stable: Mapping[str, Any] = status.get("stable") or {}
        c: Mapping[str, Any] = status.get("canary") or {}
        history = tuple(
            HistoryEntry(
                revision=h["fingerprint"],
                label=h.get("revision"),
                decision=Decision(h["decision"]),
                reason=Reason(h["reason"]),
                message=h.get("message", ""),
                started_at=_parse_time(h.get("startedAt")),
                finished_at=_parse_time(h.get("finishedAt")) or datetime.fromtimestamp(0).astimezone(),
                eval_score=h.get("evalScore"),
                baseline_score=h.get("baselineScore"),
                lower_bound=h.get("lowerBound"),
                discordance=h.get("discordance"),
            )
            for h in status.get("rolloutHistory") or []
        )
        return cls(
            phase=Phase(c.get("phase") or Phase.IDLE.value),
            stable_revision=stable.get("fingerprint"),
            canary_revision=c.get("fingerprint"),
            step=int(c.get("step") or 0),
            weight=int(c.get("weight") or 0),
            started_at=_parse_time(c.get("startedAt")),
            phase_since=_parse_time(c.get("phaseSince")),
            step_started_at=_parse_time(c.get("stepStartedAt")),
            window_extensions=int(c.get("windowExtensions") or 0),
            evaluation_attempts=int(c.get("evaluationAttempts") or 0),
            eval_score=c.get("evalScore"),
            baseline_score=c.get("baselineScore"),
            eval_lower_bound=c.get("lowerBound"),
            eval_cases=int(c.get("cases") or 0),
            failing_case_ids=tuple(c.get("failingCases") or ()),
            eval_canary_errors=int(c.get("canaryErrors") or 0),
            eval_stable_errors=int(c.get("stableErrors") or 0),
            eval_discordance=c.get("discordance"),
            power=_power_from_status(c.get("power")),
            decision=Decision(c["decision"]) if c.get("decision") else None,
            reason=Reason(c["reason"]) if c.get("reason") else None,
            message=c.get("message") or "",
            hold=bool(c.get("hold")),
            rejected_revision=c.get("rejectedFingerprint"),
            handled_control=c.get("handledControl"),
            history=history,
            stable_label=stable.get("revision"),
            canary_label=c.get("revision"),
            rejected_label=c.get("rejectedRevision"),
        )


def _power_status(check: PowerCheck | None) -> dict[str, Any] | None:
    if check is None:
        return None
    return {"cases": check.cases, "maxRegression": check.max_regression, "confidence": check.confidence,
            "discordance": check.discordance, "discordanceMeasured": check.measured,
            "passProbability": check.pass_probability, "casesNeeded": check.cases_needed,
            "underpowered": check.underpowered, "message": check.message}


def _power_from_status(doc: Mapping[str, Any] | None) -> PowerCheck | None:
    if not doc or doc.get("cases") is None:
        return None
    needed = doc.get("casesNeeded")
    return PowerCheck(cases=int(doc["cases"]), max_regression=float(doc["maxRegression"]),
                      confidence=float(doc["confidence"]), discordance=float(doc["discordance"]),
                      measured=bool(doc.get("discordanceMeasured")),
                      pass_probability=float(doc["passProbability"]),
                      cases_needed=int(needed) if needed is not None else None)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# --- replicas ---------------------------------------------------------------------------------


def canary_replicas(total: int, weight: int) -> int:
    """Replicas the canary runs for ``weight`` percent of the requests of a fleet of ``total``.

    The gateway splits requests by the weight exactly, whatever the replica counts, so the replica
    count no longer encodes the weight: it is the canary's share of the fleet, rounded up, at least
    one while it takes traffic (``ceil(total × weight / 100)``); the whole fleet at 100; none at
    weight 0 or with the fleet scaled to zero (there is no load to share).
    """
    if total < 0 or not 0 <= weight <= 100:
        raise ValueError(f"bad split: total={total}, weight={weight}")
    if total == 0 or weight == 0:
        return 0
    return max(1, -(-total * weight // 100))


def replicas_for(state: RolloutState, total: int) -> tuple[int, int]:
    """(stable, canary) replicas the handler should run now, for the autoscaler's ``total``.

    Stable keeps the whole fleet until the promotion is done, so a rollback never finds it short.
    Before traffic (Deploying, Evaluating, Paused at weight 0) the canary runs the one replica the
    evaluation talks to; during steps its share of the fleet (``canary_replicas``); while
    Promoting the whole fleet (at least one replica), whatever its weight (which stays at the last
    step's until that fleet is ready, see ``_promoting_fleet``); otherwise none.
    """
    before_traffic = state.phase is Phase.PAUSED and state.weight == 0
    if state.phase in (Phase.DEPLOYING, Phase.EVALUATING) or before_traffic:
        return total, 1
    if state.phase is Phase.PROMOTING:
        return total, max(total, 1)
    if state.phase in (Phase.STEPPING, Phase.ANALYZING, Phase.PAUSED):
        return total, canary_replicas(total, state.weight)
    return total, 0


# --- the machine ------------------------------------------------------------------------------

Result = tuple[RolloutState, tuple[Action, ...]]


def advance(
    state: RolloutState,
    inputs: Inputs,
    spec: RolloutSpec | None,
    now: datetime,
    settings: MachineSettings = DEFAULT_SETTINGS,
) -> Result:
    """One step of the machine. Pure: the same arguments always give the same result."""
    new, actions = _advance(state, inputs, spec, now, settings)
    return _with_labels(state, new, actions, inputs)


def _label_of(revision: str | None, state: RolloutState, inputs: Inputs) -> str | None:
    """The name for people of ``revision``, from what the old state or the inputs know."""
    if revision is None:
        return None
    known = {state.stable_revision: state.stable_label, state.canary_revision: state.canary_label,
             state.rejected_revision: state.rejected_label}
    if revision == inputs.desired_revision and inputs.desired_label is not None:
        return inputs.desired_label
    return known.get(revision)


def _with_labels(old: RolloutState, new: RolloutState, actions: tuple[Action, ...],
                 inputs: Inputs) -> Result:
    """Carry the labels along with the fingerprints they name (the transitions only move fingerprints)."""
    labelled = replace(
        new,
        stable_label=_label_of(new.stable_revision, old, inputs),
        canary_label=_label_of(new.canary_revision, old, inputs),
        rejected_label=_label_of(new.rejected_revision, old, inputs),
    )
    fresh = {id(h) for h in new.history} - {id(h) for h in old.history}
    if fresh:
        labelled = replace(labelled, history=tuple(
            replace(h, label=_label_of(h.revision, old, inputs)) if id(h) in fresh and h.label is None else h
            for h in new.history))
    out: list[Action] = []
    for action in actions:
        if isinstance(action, RecordHistory) and action.entry.label is None:
            action = RecordHistory(replace(action.entry, label=_label_of(action.entry.revision, old, inputs)))
        out.append(action)
    return labelled, tuple(out)


def _advance(state: RolloutState, inputs: Inputs, spec: RolloutSpec | None, now: datetime,
             settings: MachineSettings) -> Result:
    control = inputs.control
    if control is not None and control.id != state.handled_control:
        new, actions = _on_control(state, control.command, inputs, spec, now)
        return replace(new, handled_control=control.id), actions

    desired = inputs.desired_revision
    if desired is None:
        return state, ()
    if state.phase in SETTLED:
        return _settled(state, desired, spec, now, settings)
    if state.phase in ACTIVE and desired != state.canary_revision:
        return _desired_changed(state, desired, spec, now, settings)
    if state.phase in ACTIVE and spec is None:
        return _promoting(state, now, Reason.GATE_REMOVED,
                          "spec.rollout was removed during the rollout; promoting the canary")

    if state.phase is Phase.DEPLOYING:
        return _deploying(state, inputs, spec, now, settings)
    if state.phase is Phase.EVALUATING:
        return _evaluating(state, inputs, spec, now, settings)
    if state.phase is Phase.STEPPING:
        return _stepping(state, inputs, now, settings)
    if state.phase is Phase.ANALYZING:
        return _analyzing(state, inputs, spec, now, settings)
    if state.phase is Phase.PROMOTING:
        return _promoting_fleet(state, inputs, now, settings)
    if state.phase is Phase.ROLLING_BACK:
        return _finish_rollback(state, inputs, now, settings)
    return state, ()  # Paused: only a control moves it


def _event(reason: Reason, message: str, warning: bool = False) -> EmitEvent:
    return EmitEvent("Warning" if warning else "Normal", reason, message)


def _new_rollout(state: RolloutState, revision: str, now: datetime, reason: Reason, message: str) -> Result:
    new = RolloutState(
        phase=Phase.DEPLOYING, stable_revision=state.stable_revision, canary_revision=revision,
        started_at=now, phase_since=now, reason=reason, message=message,
        handled_control=state.handled_control, history=state.history,
    )
    return new, (DeployCanary(revision), SetWeight(0), _event(reason, message))


def _settled(state: RolloutState, desired: str, spec: RolloutSpec | None, now: datetime,
             settings: MachineSettings) -> Result:
    if state.stable_revision is None:
        message = f"first revision {desired} deployed as stable"
        new = replace(state, phase=Phase.IDLE, stable_revision=desired, phase_since=now,
                      reason=Reason.INITIAL_DEPLOY, message=message)
        return new, (SwitchStable(desired), _event(Reason.INITIAL_DEPLOY, message))
    if desired == state.stable_revision:
        # The spec no longer asks for a rejected revision, so the status stops reporting it.
        return (replace(state, rejected_revision=None) if state.rejected_revision else state), ()
    if desired == state.rejected_revision:
        return state, ()
    if spec is None:
        message = f"revision {desired} replaces {state.stable_revision} directly (no spec.rollout)"
        entry = HistoryEntry(desired, Decision.DIRECT, Reason.DIRECT_SWITCH, message, now, now)
        new = replace(state, phase=Phase.IDLE, stable_revision=desired, canary_revision=None,
                      phase_since=now, decision=Decision.DIRECT, reason=Reason.DIRECT_SWITCH,
                      message=message, rejected_revision=None, weight=0,
                      history=_append(state.history, entry, settings.history_limit))
        return new, (SwitchStable(desired), RecordHistory(entry), _event(Reason.DIRECT_SWITCH, message))
    return _new_rollout(state, desired, now, Reason.ROLLOUT_STARTED,
                        f"revision {desired} deploys as a canary beside stable {state.stable_revision}")


def _append(history: tuple[HistoryEntry, ...], entry: HistoryEntry, limit: int) -> tuple[HistoryEntry, ...]:
    return (*history, entry)[-limit:]


def _entry(state: RolloutState, decision: Decision, reason: Reason, message: str,
           now: datetime) -> HistoryEntry:
    return HistoryEntry(
        revision=state.canary_revision or "", decision=decision, reason=reason, message=message,
        started_at=state.started_at, finished_at=now, eval_score=state.eval_score,
        baseline_score=state.baseline_score, lower_bound=state.eval_lower_bound,
        discordance=state.eval_discordance,
    )


def _desired_changed(state: RolloutState, desired: str, spec: RolloutSpec | None, now: datetime,
                     settings: MachineSettings) -> Result:
    cancel: tuple[Action, ...] = (
        (CancelEvaluation(state.canary_revision or ""),) if state.phase is Phase.EVALUATING else ()
    )
    if desired == state.stable_revision:
        new, actions = _rolling_back(state, now, Decision.ABORTED, Reason.SPEC_REVERTED,
                                     f"the spec returned to stable revision {desired}; "
                                     f"canary {state.canary_revision} is removed")
        return new, cancel + actions
    message = f"revision {desired} supersedes canary {state.canary_revision}, which is removed unpromoted"
    entry = _entry(state, Decision.SUPERSEDED, Reason.SUPERSEDED, message, now)
    history = _append(state.history, entry, settings.history_limit)
    if spec is None:
        # The gate was removed together with the new revision: switch directly, drop the canary.
        switch = f"revision {desired} replaces {state.stable_revision} directly (no spec.rollout)"
        new = RolloutState(phase=Phase.IDLE, stable_revision=desired, phase_since=now,
                           decision=Decision.DIRECT, reason=Reason.DIRECT_SWITCH, message=switch,
                           handled_control=state.handled_control, history=history)
        return new, cancel + (Rollback(state.canary_revision or ""), RecordHistory(entry),
                              SwitchStable(desired), _event(Reason.DIRECT_SWITCH, switch))
    new, actions = _new_rollout(replace(state, history=history), desired, now, Reason.SUPERSEDED, message)
    return new, cancel + (Rollback(state.canary_revision or ""), RecordHistory(entry)) + actions


def _rolling_back(state: RolloutState, now: datetime, decision: Decision, reason: Reason,
                  message: str) -> Result:
    new = replace(state, phase=Phase.ROLLING_BACK, phase_since=now, weight=0, decision=decision,
                  reason=reason, message=message, hold=False)
    return new, (SetWeight(0), Rollback(state.canary_revision or ""), _event(reason, message, warning=True))


def _promoting(state: RolloutState, now: datetime, reason: Reason, message: str) -> Result:
    """Promoting at the weight the canary has (the last step's, 0 before any): see ``_promoting_fleet``."""
    new = replace(state, phase=Phase.PROMOTING, phase_since=now, decision=Decision.PROMOTED,
                  reason=reason, message=message, hold=False)
    return new, (Promote(state.canary_revision or ""), _event(reason, message))


def _start_step(state: RolloutState, spec: RolloutSpec, index: int, now: datetime) -> Result:
    step = spec.steps[index]
    message = (f"step {index + 1}/{len(spec.steps)}: canary {state.canary_revision} takes "
               f"{step.weight}% of traffic")
    new = replace(state, phase=Phase.STEPPING, step=index, weight=step.weight, phase_since=now,
                  step_started_at=None, window_extensions=0, reason=Reason.STEP_STARTED, message=message,
                  hold=False)
    return new, (SetWeight(step.weight), _event(Reason.STEP_STARTED, message))


def _enter_traffic(state: RolloutState, spec: RolloutSpec, now: datetime) -> Result:
    """After the gate: pause if asked, else the first step, else (no steps) promote."""
    if state.hold:
        message = "paused before the first traffic step, as asked; resume or promote to go on"
        return replace(state, phase=Phase.PAUSED, phase_since=now, weight=0, step=0,
                       reason=Reason.PAUSED, message=message), (_event(Reason.PAUSED, message),)
    if spec.steps:
        return _start_step(state, spec, 0, now)
    return _promoting(state, now, Reason.STEPS_COMPLETE, "no traffic steps configured; promoting")


def measured_discordance(history: Sequence[HistoryEntry]) -> float | None:
    """The discordance the most recent evaluated rollout measured, if any."""
    return next((h.discordance for h in reversed(history) if h.discordance is not None), None)


def _check_power(state: RolloutState, inputs: Inputs, spec: RolloutSpec) -> Result:
    """Once per canary, when the suite's size is known: is the gate able to pass an equal canary?

    A warning (condition and Event), never a block: the user may accept a strict gate knowingly.
    """
    if state.power is not None or inputs.suite_cases is None or not spec.evaluation:
        return state, ()
    check = power.assess(inputs.suite_cases, max_regression=spec.max_regression,
                         confidence=spec.confidence, measured_discordance=measured_discordance(state.history))
    new = replace(state, power=check)
    if not check.underpowered:
        return new, ()
    return new, (_event(Reason.SUITE_UNDERPOWERED, f"suite underpowered: {check.message}", warning=True),)


def _deploying(state: RolloutState, inputs: Inputs, spec: RolloutSpec | None, now: datetime,
               settings: MachineSettings) -> Result:
    assert spec is not None  # advance() handles spec None before dispatching on phase
    state, warned = _check_power(state, inputs, spec)
    new, actions = _deploying_step(state, inputs, spec, now, settings)
    return new, warned + actions


def _deploying_step(state: RolloutState, inputs: Inputs, spec: RolloutSpec, now: datetime,
                    settings: MachineSettings) -> Result:
    if inputs.canary_ready_replicas >= 1:
        if spec.evaluation:
            message = f"evaluating canary {state.canary_revision} against stable {state.stable_revision}"
            new = replace(state, phase=Phase.EVALUATING, phase_since=now, evaluation_attempts=1,
                          reason=Reason.EVALUATION_STARTED, message=message)
            start = StartEvaluation(state.canary_revision or "", 1)
            return new, (start, _event(Reason.EVALUATION_STARTED, message))
        return _enter_traffic(state, spec, now)
    if state.phase_since is not None and now - state.phase_since > settings.deploy_timeout:
        return _rolling_back(state, now, Decision.ROLLED_BACK, Reason.CANARY_NOT_READY,
                             f"canary {state.canary_revision} was not ready within {settings.deploy_timeout}")
    return state, ()


def _evaluating(state: RolloutState, inputs: Inputs, spec: RolloutSpec | None, now: datetime,
                settings: MachineSettings) -> Result:
    assert spec is not None
    state, warned = _check_power(state, inputs, spec)
    new, actions = _evaluating_step(state, inputs, spec, now, settings)
    return new, warned + actions


def _evaluating_step(state: RolloutState, inputs: Inputs, spec: RolloutSpec, now: datetime,
                     settings: MachineSettings) -> Result:
    revision = state.canary_revision or ""
    result = inputs.evaluation
    if result is not None:
        recorded = replace(state, eval_score=result.canary_score, baseline_score=result.stable_score,
                           eval_lower_bound=result.lower_bound, eval_cases=result.cases,
                           failing_case_ids=result.failing_case_ids[:20],
                           eval_canary_errors=result.canary_errors, eval_stable_errors=result.stable_errors,
                           eval_discordance=None if result.errored else result.discordance)
        if result.errored:
            return _no_verdict(recorded, now, settings, result)
        # The power at the discordance this evaluation measured (it replaces an assumed one).
        recorded, note = _remeasured_power(recorded, spec, result)
        if not result.passed:
            return _rolling_back(recorded, now, Decision.ROLLED_BACK, Reason.EVALUATION_FAILED,
                                 f"evaluation gate failed: {result.reason}{note}")
        new, actions = _enter_traffic(recorded, spec, now)
        return new, (_event(Reason.EVALUATION_PASSED, f"evaluation gate passed: {result.reason}"), *actions)
    lost = not inputs.evaluation_running
    if inputs.evaluation_error is not None or lost:
        why = inputs.evaluation_error or "the evaluation is no longer running (operator restart?)"
        if state.evaluation_attempts >= settings.max_evaluation_attempts:
            return _rolling_back(state, now, Decision.ROLLED_BACK, Reason.EVALUATION_ERROR,
                                 f"evaluation failed {state.evaluation_attempts} times; last: {why}")
        attempt = state.evaluation_attempts + 1
        message = f"evaluation attempt {attempt} of canary {revision}; previous: {why}"
        new = replace(state, phase_since=now, evaluation_attempts=attempt, message=message)
        retry = StartEvaluation(revision, attempt)
        return new, (retry, _event(Reason.EVALUATION_ERROR, message, warning=True))
    if state.phase_since is not None and now - state.phase_since > settings.evaluation_timeout:
        new, actions = _rolling_back(state, now, Decision.ROLLED_BACK, Reason.EVALUATION_TIMEOUT,
                                     f"evaluation took longer than {settings.evaluation_timeout}")
        return new, (CancelEvaluation(revision), *actions)
    return state, ()


def _no_verdict(state: RolloutState, now: datetime, settings: MachineSettings, result: EvalResult) -> Result:
    """Too many request errors: like a runner error, a new attempt, and after the last a rollback.

    Never a promotion: the canary has not been compared. Errors are often transient (stable busy
    with user traffic, a canary still warming up); the same errors on every attempt (a model
    without a chat template answers 400/404 to everything) end in a rollback that says so.
    """
    revision = state.canary_revision or ""
    if state.evaluation_attempts >= settings.max_evaluation_attempts:
        return _rolling_back(state, now, Decision.ROLLED_BACK, Reason.EVALUATION_ERRORS,
                             f"no evaluation verdict after {state.evaluation_attempts} attempts; the last: "
                             f"{result.reason}")
    attempt = state.evaluation_attempts + 1
    message = (f"evaluation attempt {attempt} of canary {revision}; the previous had no verdict: "
               f"{result.reason}")
    new = replace(state, phase_since=now, evaluation_attempts=attempt, reason=Reason.EVALUATION_ERRORS,
                  message=message)
    return new, (StartEvaluation(revision, attempt), _event(Reason.EVALUATION_ERRORS, message, warning=True))


def _remeasured_power(state: RolloutState, spec: RolloutSpec, result: EvalResult) -> tuple[RolloutState, str]:
    """The power check again, at the discordance just measured; a note for a refusal it explains."""
    if result.discordance is None or result.suite_cases <= 0 or not spec.evaluation:
        return state, ""
    check = power.assess(result.suite_cases, max_regression=spec.max_regression, confidence=spec.confidence,
                         measured_discordance=result.discordance)
    refused_on_margin = result.lower_bound is not None and result.lower_bound < -spec.max_regression
    note = f" (suite underpowered: {check.message})" if check.underpowered and refused_on_margin else ""
    return replace(state, power=check), note


def _stepping(state: RolloutState, inputs: Inputs, now: datetime, settings: MachineSettings) -> Result:
    wanted = canary_replicas(inputs.total_replicas, state.weight)
    if inputs.canary_ready_replicas >= max(1, wanted):
        message = f"analysis window of step {state.step + 1} began at {state.weight}%"
        new = replace(state, phase=Phase.ANALYZING, phase_since=now, step_started_at=now,
                      window_extensions=0, reason=Reason.WINDOW_STARTED, message=message)
        return new, (BeginAnalysisWindow(state.step), _event(Reason.WINDOW_STARTED, message))
    if state.phase_since is not None and now - state.phase_since > settings.deploy_timeout:
        return _rolling_back(state, now, Decision.ROLLED_BACK, Reason.CANARY_NOT_READY,
                             f"{wanted} canary replicas for {state.weight}% were not ready within "
                             f"{settings.deploy_timeout}")
    return state, ()


def window_end(state: RolloutState, spec: RolloutSpec, settings: MachineSettings = DEFAULT_SETTINGS
               ) -> datetime | None:
    """When the current analysis window ends (its step's pause, plus any extensions)."""
    if state.step_started_at is None or not spec.steps:
        return None
    pause = timedelta(seconds=spec.steps[min(state.step, len(spec.steps) - 1)].pause_seconds)
    extension = max(pause, settings.min_extension)
    return state.step_started_at + pause + extension * state.window_extensions


def _next_step(state: RolloutState, spec: RolloutSpec, now: datetime) -> Result:
    if state.step + 1 < len(spec.steps):
        return _start_step(state, spec, state.step + 1, now)
    return _promoting(state, now, Reason.STEPS_COMPLETE,
                      f"all {len(spec.steps)} steps passed; promoting canary {state.canary_revision}")


def _analyzing(state: RolloutState, inputs: Inputs, spec: RolloutSpec | None, now: datetime,
               settings: MachineSettings) -> Result:
    assert spec is not None
    if state.step >= len(spec.steps):
        # The steps were shortened during the rollout; the ones left are done.
        return _promoting(state, now, Reason.STEPS_COMPLETE, "the remaining steps were removed; promoting")
    if spec.analysis and not inputs.analysis_window_open:
        message = f"analysis window of step {state.step + 1} restarted (its start snapshot was lost)"
        new = replace(state, phase_since=now, step_started_at=now, window_extensions=0,
                      reason=Reason.WINDOW_STARTED, message=message)
        return new, (BeginAnalysisWindow(state.step), _event(Reason.WINDOW_STARTED, message))
    end = window_end(state, spec, settings)
    if end is None or now < end:
        return state, ()
    if not spec.analysis:
        return _next_step(state, spec, now)
    verdict = inputs.analysis
    if verdict is None:
        return state, (RunAnalysis(state.step),)
    where = f"step {state.step + 1} ({state.weight}%)"
    if verdict.outcome is Outcome.PASS:
        new, actions = _next_step(state, spec, now)
        return new, (_event(Reason.ANALYSIS_PASSED, f"{where}: {verdict.reason}"), *actions)
    if verdict.outcome is Outcome.FAIL:
        return _rolling_back(state, now, Decision.ROLLED_BACK, Reason.ANALYSIS_FAILED,
                             f"live analysis failed at {where}: {verdict.reason}")
    if state.window_extensions < settings.max_window_extensions:
        extensions = state.window_extensions + 1
        message = (f"{where} inconclusive ({verdict.reason}); holding the weight, window extended "
                   f"({extensions}/{settings.max_window_extensions})")
        new = replace(state, window_extensions=extensions, reason=Reason.WINDOW_EXTENDED, message=message)
        return new, (_event(Reason.WINDOW_EXTENDED, message),)
    message = (f"{where} still inconclusive after {state.window_extensions} extensions: {verdict.reason}")
    if settings.on_inconclusive is InconclusivePolicy.ROLLBACK:
        return _rolling_back(state, now, Decision.ROLLED_BACK, Reason.ANALYSIS_INCONCLUSIVE, message)
    message += "; paused at this weight: resume (new window), promote or abort"
    new = replace(state, phase=Phase.PAUSED, phase_since=now, reason=Reason.ANALYSIS_INCONCLUSIVE,
                  message=message)
    return new, (_event(Reason.ANALYSIS_INCONCLUSIVE, message, warning=True),)


#: Separates the message of the promotion's cause from the count of the fleet it waits for.
_FLEET_WAIT = "; waiting for the canary's whole fleet: "


def _promoting_fleet(state: RolloutState, inputs: Inputs, now: datetime, settings: MachineSettings) -> Result:
    """Promoting below 100%: the canary keeps the weight it had until its whole fleet is ready.

    The canary was scaled to the whole fleet on entering Promoting (``replicas_for``) but keeps the
    weight it had (the last step's, or 0 when promoted before any step), so it never serves more
    requests than its ready replicas were sized for (a 50% step on 4 replicas is 2 canary replicas;
    100% at once would put 4 replicas' load on those 2 for one cold start). Once ``total`` (at
    least 1) canary replicas are ready it takes 100% (``SetWeight(100)``); the driver then moves the
    Service and removes stable, as before. Not ready within ``deploy_timeout`` (no GPU for the
    second fleet): a rollback, which is still clean at this weight (stable has its whole fleet); the
    wait shows in the message with the ready/wanted counts meanwhile. At 100 (a last step of 100%,
    or the fleet ready): the old stable goes (``_finish_promotion``).
    """
    if state.weight >= 100:
        return _finish_promotion(state, inputs, now, settings)
    revision = state.canary_revision or ""
    wanted = max(1, inputs.total_replicas)
    ready = inputs.canary_ready_replicas
    cause = state.message.split(_FLEET_WAIT, 1)[0]
    if ready >= wanted:
        message = (f"{cause}; the canary's whole fleet is ready ({ready}/{wanted} replicas): "
                   f"it takes 100% of the requests (was {state.weight}%)")
        new = replace(state, weight=100, message=message)
        return new, (SetWeight(100), _event(Reason.FLEET_READY, message))
    if state.phase_since is not None and now - state.phase_since > settings.deploy_timeout:
        return _rolling_back(state, now, Decision.ROLLED_BACK, Reason.CANARY_NOT_READY,
                             f"promotion of canary {revision}: {ready}/{wanted} replicas of its whole fleet "
                             f"were ready after {settings.deploy_timeout} (it took {state.weight}% of the "
                             f"requests); stable {state.stable_revision} keeps serving")
    message = (f"{cause}{_FLEET_WAIT}{ready}/{wanted} replicas ready; it takes {state.weight}% of the "
               f"requests until all are (rolled back if not within {settings.deploy_timeout})")
    return (state if message == state.message else replace(state, message=message)), ()


def _finish_promotion(state: RolloutState, inputs: Inputs, now: datetime,
                      settings: MachineSettings) -> Result:
    if inputs.stable_revision_live != state.canary_revision or inputs.canary_present:
        return state, ()
    revision = state.canary_revision or ""
    message = f"revision {revision} is stable (was {state.stable_revision}): {state.message}"
    entry = _entry(state, Decision.PROMOTED, state.reason or Reason.PROMOTED, message, now)
    new = replace(state, phase=Phase.PROMOTED, stable_revision=revision, canary_revision=None, weight=0,
                  phase_since=now, decision=Decision.PROMOTED, message=message, rejected_revision=None,
                  history=_append(state.history, entry, settings.history_limit))
    return new, (RecordHistory(entry), _event(Reason.PROMOTED, message))


def _finish_rollback(state: RolloutState, inputs: Inputs, now: datetime,
                     settings: MachineSettings) -> Result:
    if inputs.canary_present:
        return state, ()
    decision = state.decision or Decision.ROLLED_BACK
    phase = Phase.ABORTED if decision is Decision.ABORTED else Phase.ROLLED_BACK
    reason = state.reason or Reason.ROLLED_BACK
    revision = state.canary_revision or ""
    message = (f"revision {revision} is not live; stable {state.stable_revision} serves all traffic. "
               f"{state.message}")
    entry = _entry(state, decision, reason, state.message, now)
    # After a spec revert the desired revision IS stable: nothing is rejected.
    rejected = None if reason is Reason.SPEC_REVERTED else revision
    new = replace(state, phase=phase, canary_revision=None, weight=0, phase_since=now, message=message,
                  rejected_revision=rejected, history=_append(state.history, entry, settings.history_limit))
    return new, (RecordHistory(entry), _event(Reason.ROLLED_BACK, message, warning=True))


def _ignored(state: RolloutState, command: Command, why: str) -> Result:
    return state, (_event(Reason.CONTROL_IGNORED, f"{command.value} ignored: {why}", warning=True),)


def _on_control(state: RolloutState, command: Command, inputs: Inputs, spec: RolloutSpec | None,
                now: datetime) -> Result:
    phase = state.phase
    if command is Command.ABORT:
        if phase not in ACTIVE:
            return _ignored(state, command, f"no rollout to abort (phase {phase.value})")
        new, actions = _rolling_back(state, now, Decision.ABORTED, Reason.ABORTED,
                                     f"rollout of {state.canary_revision} aborted by a user")
        cancel = (CancelEvaluation(state.canary_revision or ""),) if phase is Phase.EVALUATING else ()
        return new, cancel + actions

    if command is Command.PROMOTE:
        if phase is Phase.DEPLOYING:
            return _ignored(state, command, "the canary is not ready yet; promote again once it serves")
        if phase not in ACTIVE:
            return _ignored(state, command, f"no rollout to promote (phase {phase.value})")
        skipped = "the evaluation gate and all steps" if phase is Phase.EVALUATING else "the remaining steps"
        new, actions = _promoting(state, now, Reason.MANUAL_PROMOTE,
                                  f"promoted by a user; {skipped} skipped")
        cancel = (CancelEvaluation(state.canary_revision or ""),) if phase is Phase.EVALUATING else ()
        return new, cancel + actions

    if command is Command.PAUSE:
        if phase in (Phase.DEPLOYING, Phase.EVALUATING):
            message = "pause noted: the rollout will stop before the first traffic step"
            return replace(state, hold=True, reason=Reason.PAUSE_PENDING, message=message), (
                _event(Reason.PAUSE_PENDING, message),)
        if phase in (Phase.STEPPING, Phase.ANALYZING):
            message = f"paused by a user at step {state.step + 1} ({state.weight}%)"
            new = replace(state, phase=Phase.PAUSED, phase_since=now, reason=Reason.PAUSED, message=message)
            return new, (_event(Reason.PAUSED, message),)
        return _ignored(state, command, f"nothing to pause (phase {phase.value})")

    # RESUME
    if phase is Phase.PAUSED and spec is not None:
        if state.weight == 0:  # paused before the first step
            new, actions = _enter_traffic(replace(state, hold=False), spec, now)
        elif state.step < len(spec.steps):
            new, actions = _start_step(state, spec, state.step, now)
        else:
            new, actions = _next_step(replace(state, step=len(spec.steps) - 1), spec, now)
        return new, (_event(Reason.RESUMED, "resumed by a user"), *actions)
    if phase in (Phase.DEPLOYING, Phase.EVALUATING) and state.hold:
        message = "resumed by a user: the pending pause is cancelled"
        return replace(state, hold=False, reason=Reason.RESUMED, message=message), (
            _event(Reason.RESUMED, message),)
    if (phase in (Phase.ROLLED_BACK, Phase.ABORTED) and spec is not None and inputs.desired_revision
            and inputs.desired_revision == state.rejected_revision):
        revision = inputs.desired_revision
        return _new_rollout(replace(state, rejected_revision=None), revision, now, Reason.RETRY,
                            f"retrying revision {revision} as asked")
    return _ignored(state, command, f"nothing to resume (phase {phase.value})")


def describe(actions: Sequence[Action]) -> list[str]:
    """Short text of actions, for logs."""
    return [type(a).__name__ + (f"({a.revision})" if hasattr(a, "revision") else "") for a in actions]
