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
bound is found by bisection on the monotone score statistic. docs/rollouts.md has a worked example.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

#: Bisection stops when the bracket is narrower than this (far below any meaningful score step).
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class PairedOutcome:
    """One case of the suite as answered by both revisions."""

    case_id: str
    canary_correct: bool
    stable_correct: bool


@dataclass(frozen=True)
class GateResult:
    """The decision of the evaluation gate, with every number that went into it."""

    passed: bool
    reason: str  #: one sentence a person reads in the condition message
    n: int  #: number of paired cases
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


def wilson_lower_bound(successes: int, n: int, *, confidence: float = 0.95) -> float:
    """One-sided Wilson score lower bound of a binomial proportion (0 when n is 0)."""
    if n <= 0:
        return 0.0
    z = NormalDist().inv_cdf(confidence)
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
    z = NormalDist().inv_cdf(confidence)
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


def evaluate_gate(
    outcomes: Sequence[PairedOutcome],
    *,
    min_score: float,
    max_regression: float = 0.02,
    confidence: float = 0.95,
) -> GateResult:
    """Decide the gate from paired outcomes; pure, deterministic."""
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    n = len(outcomes)
    canary_right = sum(1 for o in outcomes if o.canary_correct)
    stable_right = sum(1 for o in outcomes if o.stable_correct)
    b = sum(1 for o in outcomes if o.canary_correct and not o.stable_correct)
    c = sum(1 for o in outcomes if o.stable_correct and not o.canary_correct)
    regressions = sorted(o.case_id for o in outcomes if o.stable_correct and not o.canary_correct)
    both_wrong = sorted(o.case_id for o in outcomes if not o.stable_correct and not o.canary_correct)
    canary_score = canary_right / n if n else 0.0
    stable_score = stable_right / n if n else 0.0
    lower = paired_diff_lower_bound(b, c, n, confidence=confidence) if n else -1.0
    floor_ok = n > 0 and canary_score >= min_score
    # A tiny epsilon so that a bound landing exactly on the margin (bisection noise) is not refused.
    regression_ok = n > 0 and lower >= -max_regression - 1e-9
    pct = f"{confidence:.0%}"
    if n == 0:
        reason = "the suite produced no cases, so nothing can be concluded"
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
    return GateResult(
        passed=floor_ok and regression_ok,
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
    )


def outcomes_from_pairs(pairs: Iterable[tuple[bool, bool]]) -> tuple[PairedOutcome, ...]:
    """Build outcomes with positional ids (``case-0``…), for tests and simulations."""
    return tuple(PairedOutcome(f"case-{i}", cr, sr) for i, (cr, sr) in enumerate(pairs))
