"""The statistical gate: is the canary non-inferior to stable on the same evaluation suite?

Every case of the suite is answered by both revisions, so the outcomes are *paired*: per case,
(canary_correct, stable_correct). Treating the two scores as independent samples would throw away
that pairing and make the test far less powerful (two fine-tunes of one model mostly agree), so the
decision rests only on the *discordant* pairs:

* ``b`` — canary right, stable wrong;
* ``c`` — canary wrong, stable right.

The difference of the two scores is ``(b - c) / n``. The gate passes iff

1. the canary's observed score is at least ``min_score`` (the absolute floor, a plain acceptance bar
   the user sets, like an lm-eval threshold; its Wilson lower bound is reported for information), and
2. the one-sided lower confidence bound, at level ``confidence``, of (canary − stable) is at least
   ``-max_regression`` — a non-inferiority test, so a small suite cannot promote a worse model by luck.

The bound is the inverted *Tango score test* for the difference of two paired proportions
(T. Tango, "Equivalence test and confidence interval for the difference in proportions for the
paired-sample design", Statistics in Medicine 17:891–908, 1998; correction in 18:3511, 1999). It is
the standard non-inferiority test for matched binary data, uses the restricted maximum-likelihood
estimate of the discordant cell under each tested difference, and keeps its size close to the
nominal level down to small n and to zero discordant pairs, where the Wald interval collapses. The
decision is the score test at ``delta = -max_regression`` (``non_inferior``); the bound reported
beside it is found by bisection on the monotone score statistic. docs/rollouts.md has a worked
example.

**Errors are neither passes nor failures.** A case whose request failed on either revision (after
the runner's retries) says nothing about which checkpoint answers better, so the whole pair is left
out of the counts above: counting a failed request as a wrong answer would let a revision win by the
other side's errors (stable overloaded by user traffic makes an inferior canary look equal), and
would make two revisions that both fail everything look identical (0.000 vs 0.000, no discordant
pair: a pass on a large enough suite). When more than ``max_error_rate`` of the pairs are left out,
the evaluation has no verdict at all (``Verdict.ERROR``): the state machine retries it and never
promotes on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from statistics import NormalDist

from modelplane.api.models import EvaluationSpec

#: Bisection stops when the bracket is narrower than this (far below any meaningful score step).
_TOLERANCE = 1e-9
#: The score test passes at ``z - Z_TOLERANCE``, so that data landing exactly on the margin (where
#: the score equals z up to rounding) is not refused by floating-point noise.
Z_TOLERANCE = 1e-9
#: The gate's defaults are the API's (``spec.rollout.evaluation``), which alone knows them; the
#: operator passes the parsed values, these serve direct callers (tests, the power tables).
DEFAULT_MAX_REGRESSION: float = EvaluationSpec.model_fields["max_regression"].default
DEFAULT_CONFIDENCE: float = EvaluationSpec.model_fields["confidence"].default
#: Share of pairs that may be left out for request errors before the evaluation is an error.
DEFAULT_MAX_ERROR_RATE: float = EvaluationSpec.model_fields["max_error_rate"].default


class Verdict(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    ERROR = "Error"  #: too many request errors (or no case at all): no verdict, never a promotion


@dataclass(frozen=True)
class PairedOutcome:
    """One case of the suite as answered by both revisions."""

    case_id: str
    canary_correct: bool
    stable_correct: bool
    canary_error: bool = False  #: the canary's request (or its grading) failed: no answer to judge
    stable_error: bool = False  #: the same for stable

    @property
    def excluded(self) -> bool:
        """Left out of the comparison: one side has no answer, so the pair says nothing."""
        return self.canary_error or self.stable_error


@dataclass(frozen=True)
class GateResult:
    """The decision of the evaluation gate, with every number that went into it."""

    verdict: Verdict
    reason: str  #: one sentence a person reads in the condition message
    n: int  #: number of paired cases compared (those without a request error on either side)
    canary_score: float
    stable_score: float
    diff: float  #: canary_score - stable_score
    lower_bound: float  #: one-sided lower confidence bound of diff at ``confidence``
    canary_score_lower: float  #: Wilson lower bound of the canary score at ``confidence`` (information)
    canary_only: int  #: discordant pairs where only the canary was right (``b``)
    stable_only: int  #: discordant pairs where only stable was right (``c``)
    min_score: float
    max_regression: float
    confidence: float
    #: Cases the canary got wrong, sorted; the ones stable got right come first (they are regressions).
    failing_case_ids: tuple[str, ...]
    total: int = 0  #: cases in the suite, compared or not
    canary_errors: int = 0  #: cases whose canary request failed
    stable_errors: int = 0  #: cases whose stable request failed
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASS

    @property
    def errored(self) -> bool:
        return self.verdict is Verdict.ERROR

    @property
    def excluded(self) -> int:
        """Pairs left out for a request error on either side."""
        return self.total - self.n

    @property
    def discordance(self) -> float | None:
        """Share of the compared pairs on which the two revisions differ (None when none compared)."""
        return (self.canary_only + self.stable_only) / self.n if self.n else None


@lru_cache(maxsize=64)
def z_of(confidence: float) -> float:
    """The one-sided standard normal quantile of ``confidence``."""
    return NormalDist().inv_cdf(confidence)


def wilson_lower_bound(successes: int, n: int, *, confidence: float = 0.95) -> float:
    """One-sided Wilson score lower bound of a binomial proportion (0 when n is 0)."""
    if n <= 0:
        return 0.0
    z = z_of(confidence)
    p = successes / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n))


def wilson_upper_bound(successes: int, n: int, *, confidence: float = 0.95) -> float:
    """One-sided Wilson score upper bound of a binomial proportion (1 when n is 0)."""
    if n <= 0:
        return 1.0
    return 1.0 - wilson_lower_bound(n - successes, n, confidence=confidence)


def tango_score(b: int, c: int, n: int, delta: float) -> float:
    """Tango's score statistic for H0: p_b - p_c = delta, with b, c the discordant counts of n pairs.

    Large positive values are evidence that the true difference exceeds ``delta``. The variance uses
    the restricted MLE of p_c under the constraint p_b = p_c + delta (the root of
    ``2n·q² + (−(b+c) + (2n − b + c)·delta)·q − c·delta·(1 − delta) = 0`` in [0, 1]).
    """
    if n <= 0:
        raise ValueError("n must be positive")
    a_coef = 2.0 * n
    b_coef = -(b + c) + (2.0 * n - b + c) * delta
    c_coef = -c * delta * (1.0 - delta)
    disc = max(0.0, b_coef * b_coef - 4.0 * a_coef * c_coef)
    q = (math.sqrt(disc) - b_coef) / (2.0 * a_coef)
    variance = n * (2.0 * q + delta * (1.0 - delta))
    numerator = (b - c) - n * delta
    if variance <= 0.0:
        # Only at delta == 0 with no discordant pairs: the data agree exactly with H0.
        return 0.0 if numerator == 0 else math.copysign(math.inf, numerator)
    return numerator / math.sqrt(variance)


def paired_diff_lower_bound(b: int, c: int, n: int, *, confidence: float = 0.95) -> float:
    """One-sided lower confidence bound of (p_canary − p_stable) from discordant counts b, c of n pairs.

    The bound is the smallest delta that the one-sided Tango score test at this level does not reject:
    ``{delta : score(delta) < z}``. The score falls as delta rises, so bisection on [-1, diff] finds it.
    """
    if n <= 0:
        return -1.0
    if not 0 <= b + c <= n:
        raise ValueError(f"discordant counts b={b}, c={c} do not fit in n={n}")
    z = z_of(confidence)
    diff = (b - c) / n
    low, high = -1.0, diff
    if tango_score(b, c, n, low + _TOLERANCE) < z:
        return -1.0
    while high - low > _TOLERANCE:
        mid = (low + high) / 2
        if tango_score(b, c, n, mid) >= z:
            low = mid
        else:
            high = mid
    return low


def non_inferior(b: int, c: int, n: int, *, max_regression: float, confidence: float) -> bool:
    """The gate's regression test: does the one-sided Tango score test at level ``confidence`` reject
    "the canary is worse by ``max_regression`` or more"? Equivalently, the lower confidence bound of
    the difference (``paired_diff_lower_bound``) is at least ``-max_regression``.

    This is the decision itself (``modelplane.rollout.power`` computes its pass probability exactly
    from it); a margin of 1 or more admits every difference.
    """
    if n <= 0:
        return False
    if max_regression >= 1:
        return True
    return tango_score(b, c, n, -max_regression) >= z_of(confidence) - Z_TOLERANCE


def evaluate_gate(
    outcomes: Sequence[PairedOutcome],
    *,
    min_score: float,
    max_regression: float = DEFAULT_MAX_REGRESSION,
    confidence: float = DEFAULT_CONFIDENCE,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
) -> GateResult:
    """Decide the gate from paired outcomes; pure, deterministic.

    Pairs with a request error on either side are left out; more than ``max_error_rate`` of them
    make the verdict ``ERROR`` (see the module docstring).
    """
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    if not 0 <= max_error_rate <= 1:
        raise ValueError(f"max_error_rate must be in [0, 1], got {max_error_rate}")
    total = len(outcomes)
    canary_errors = sum(1 for o in outcomes if o.canary_error)
    stable_errors = sum(1 for o in outcomes if o.stable_error)
    compared = [o for o in outcomes if not o.excluded]
    n = len(compared)
    canary_right = sum(1 for o in compared if o.canary_correct)
    stable_right = sum(1 for o in compared if o.stable_correct)
    b = sum(1 for o in compared if o.canary_correct and not o.stable_correct)
    c = sum(1 for o in compared if o.stable_correct and not o.canary_correct)
    regressions = sorted(o.case_id for o in compared if o.stable_correct and not o.canary_correct)
    both_wrong = sorted(o.case_id for o in compared if not o.stable_correct and not o.canary_correct)
    canary_score = canary_right / n if n else 0.0
    stable_score = stable_right / n if n else 0.0
    lower = paired_diff_lower_bound(b, c, n, confidence=confidence) if n else -1.0
    excluded = total - n
    too_many_errors = total == 0 or n == 0 or excluded > max_error_rate * total + 1e-9
    floor_ok = n > 0 and canary_score >= min_score
    regression_ok = non_inferior(b, c, n, max_regression=max_regression, confidence=confidence)
    pct = f"{confidence:.0%}"
    if total == 0:
        reason = "the suite produced no cases, so nothing can be concluded"
    elif too_many_errors:
        reason = (f"no verdict: {excluded} of {total} cases ({excluded / total:.1%}) have no answer to "
                  f"compare (request or grading errors: canary {canary_errors}, stable {stable_errors}), "
                  f"more than maxErrorRate {max_error_rate:g} allows")
    elif not floor_ok:
        reason = f"canary score {canary_score:.3f} is below the floor minScore {min_score:.3f} (n={n})"
    elif not regression_ok:
        reason = (
            f"canary {canary_score:.3f} vs stable {stable_score:.3f} (n={n}, {c} regressions, {b} fixes): "
            f"the {pct} lower bound of the difference, {lower:+.3f}, is below -maxRegression "
            f"{-max_regression:+.3f}"
        )
    else:
        reason = (
            f"canary {canary_score:.3f} vs stable {stable_score:.3f} (n={n}, {c} regressions, {b} fixes): "
            f"the {pct} lower bound of the difference, {lower:+.3f}, clears -maxRegression "
            f"{-max_regression:+.3f} and the floor {min_score:.3f}"
        )
    if excluded and not too_many_errors:
        reason += (f"; {excluded} of {total} cases left out for request or grading errors (canary "
                   f"{canary_errors}, stable {stable_errors})")
    if too_many_errors:
        verdict = Verdict.ERROR
    else:
        verdict = Verdict.PASS if floor_ok and regression_ok else Verdict.FAIL
    return GateResult(
        verdict=verdict,
        reason=reason,
        n=n,
        canary_score=canary_score,
        stable_score=stable_score,
        diff=canary_score - stable_score,
        lower_bound=lower,
        canary_score_lower=wilson_lower_bound(canary_right, n, confidence=confidence),
        canary_only=b,
        stable_only=c,
        min_score=min_score,
        max_regression=max_regression,
        confidence=confidence,
        failing_case_ids=tuple(regressions + both_wrong),
        total=total,
        canary_errors=canary_errors,
        stable_errors=stable_errors,
        max_error_rate=max_error_rate,
    )


def outcomes_from_pairs(pairs: Iterable[tuple[bool, bool]]) -> tuple[PairedOutcome, ...]:
    """Build outcomes with positional ids (``case-0``…), for tests and simulations."""
    return tuple(PairedOutcome(f"case-{i}", cr, sr) for i, (cr, sr) in enumerate(pairs))
