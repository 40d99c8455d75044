"""The gate's power: how often the evaluation gate passes a canary exactly as good as stable.

The gate (``stats.non_inferior``) refuses a canary unless the data rule out a regression of
``maxRegression`` or more at the given confidence. A suite that is too small for its margin cannot
rule that out even for a canary that is exactly as good as stable: the gate then refuses good
checkpoints most of the time, and a refusal says nothing. This module computes how often, exactly.

For a canary and stable that answer the same share of cases right and differ on a share ``d`` of
them (the *discordance*), the counts of a suite of ``n`` cases are multinomial: ``k`` discordant
pairs with ``k ~ Binomial(n, d)``, of which ``b ~ Binomial(k, 1/2)`` go the canary's way. The gate's
decision depends on ``(b, k - b, n)`` only and, for each ``k``, passes exactly when ``b`` reaches a
threshold ``t(k)`` (the score rises with ``b``). So::

    P(pass) = sum over k of  Binomial(n, d)(k) * P(Binomial(k, 1/2) >= t(k))

summed over every ``k`` within 8 standard deviations (and 10 counts) of the mean: the neglected
tail weighs under 1e-12, so ``pass_probability`` is exact to that. A canary truly worse by
``delta`` has ``b ~ Binomial(k, (d + delta) / 2d)`` (``delta`` < 0), which gives the
false-promotion rate at the margin.

``cases_needed`` is the smallest suite from which on the pass probability stays at or above the
target (80% by default). The pass probability zig-zags as ``n`` grows (the discordant count is
discrete: by several points when a suite has only a few discordant pairs, by a fraction of a point
when it has dozens), so the smallest ``n`` that reaches 80% once can be followed by sizes below it;
the number reported is the one after the last size below the target, looked for up to the size
where the probability is clearly above the target (``_clear``: by more than the zig-zag's
amplitude; a test checks the result against a scan of every size).

``python -m modelplane.rollout.power`` prints the sizing table of docs/rollouts.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from modelplane.rollout.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MAX_REGRESSION,
    Z_TOLERANCE,
    tango_score,
    z_of,
)

#: The pass probability an equal canary should have: below it the suite is called underpowered.
TARGET = 0.80
#: Discordance assumed before the first evaluation has measured one (the share of cases on which
#: canary and stable differ). Two fine-tunes of one base model typically differ on 5-15% of a
#: suite, a quantisation or engine change on 1-5%; 10% errs towards warning.
ASSUMED_DISCORDANCE = 0.10
#: ``cases_needed`` gives up (returns None) beyond this many cases.
MAX_CASES = 200_000
#: The least margin above the target beyond which larger sizes are not checked (``_clear``).
_CLEAR = 0.01
#: Standard deviations of Binomial(n, d) summed on each side of its mean, plus 10 counts (the rest
#: weighs under 1e-12; a test checks it at the extremes).
_SIGMAS = 8.0


def pass_probability(n: int, *, max_regression: float, confidence: float, discordance: float,
                     difference: float = 0.0) -> float:
    """Exact probability that the gate's regression test passes a suite of ``n`` cases.

    ``discordance`` is the share of cases on which the two revisions differ, ``difference`` the
    canary's true score minus stable's (0: an equal canary; ``-max_regression``: one worse by the
    margin, whose pass probability is the false-promotion rate). The floor (``minScore``) is not
    part of it: it is the user's own acceptance bar.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return _curve(max_regression, confidence, discordance, difference).at(n)


class _Curve:
    """The pass probability as a function of the suite size, for one gate and one pair of revisions.

    It keeps, for each count k of discordant pairs, the threshold on b it found last (the threshold
    moves by a step or two between nearby sizes, so the next size walks from it) and the binomial
    tails it summed: each size a search visits costs a few score evaluations per k.
    """

    def __init__(self, max_regression: float, confidence: float, discordance: float,
                 difference: float) -> None:
        if not 0 <= discordance <= 1:
            raise ValueError(f"discordance must be in [0, 1], got {discordance}")
        if abs(difference) > discordance + 1e-12:
            raise ValueError(f"a difference of {difference:+g} needs a discordance of at least "
                             f"{abs(difference):g}, got {discordance:g}")
        if not 0.5 <= confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
        self.max_regression = max_regression
        self.discordance = discordance
        #: P(a discordant pair goes the canary's way)
        self.p_canary = 0.5
        if discordance > 0:
            self.p_canary = min(1.0, max(0.0, (discordance + difference) / (2 * discordance)))
        self.z = z_of(confidence) - Z_TOLERANCE
        self.thresholds: dict[int, int] = {}
        self.tails: dict[tuple[int, int], float] = {}
        self.values: dict[int, float] = {}

    def passes(self, b: int, c: int, n: int) -> bool:
        """``stats.non_inferior`` with z looked up once (a test checks that the two agree)."""
        return self.max_regression >= 1 or tango_score(b, c, n, -self.max_regression) >= self.z

    def at(self, n: int) -> float:
        found = self.values.get(n)
        if found is None:
            found = self.values[n] = self._sum(n) if self.discordance > 0 else float(self.passes(0, 0, n))
        return found

    def _sum(self, n: int) -> float:
        d = self.discordance
        lo, hi = _k_range(n, d)
        total = 0.0
        t_prev: int | None = None
        for k in range(lo, hi + 1):
            t = self._threshold(k, n, self.thresholds.get(k, t_prev))
            self.thresholds[k] = t_prev = t
            if t > k:
                continue
            tail = self.tails.get((k, t))
            if tail is None:
                tail = self.tails[(k, t)] = _upper_tail(t, k, self.p_canary)
            total += math.exp(_log_binom_pmf(k, n, d)) * tail
        return min(1.0, total)

    def _threshold(self, k: int, n: int, start: int | None) -> int:
        """The smallest b in [0, k] with which the gate passes (k + 1 when none does).

        Walks from ``start`` (this k's threshold at a nearby size, or the previous k's) or bisects.
        """
        if start is None:
            low, high = 0, k + 1
            while low < high:
                mid = (low + high) // 2
                if self.passes(mid, k - mid, n):
                    high = mid
                else:
                    low = mid + 1
            return low
        t = min(max(start, 0), k + 1)
        while t > 0 and self.passes(t - 1, k - t + 1, n):  # passing goes on below: go down
            t -= 1
        while t <= k and not self.passes(t, k - t, n):  # t itself does not pass: go up
            t += 1
        return t


@lru_cache(maxsize=128)
def _curve(max_regression: float, confidence: float, discordance: float, difference: float) -> _Curve:
    return _Curve(max_regression, confidence, discordance, difference)


def _k_range(n: int, p: float) -> tuple[int, int]:
    """The discordant counts worth summing: the mean +- _SIGMAS standard deviations (and 10)."""
    mean = n * p
    sd = math.sqrt(n * p * (1 - p))
    return max(0, math.floor(mean - _SIGMAS * sd - 10)), min(n, math.ceil(mean + _SIGMAS * sd + 10))


def _log_binom_pmf(k: int, n: int, p: float) -> float:
    if p <= 0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1:
        return 0.0 if k == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def _upper_tail(t: int, k: int, p: float) -> float:
    """P(Binomial(k, p) >= t), summed from the side of t away from the mode (the terms fall off)."""
    if t <= 0:
        return 1.0
    if t > k:
        return 0.0
    if p <= 0 or p >= 1:
        return 1.0 if p >= 1 else 0.0
    ratio = p / (1 - p)
    if t > k * p:  # sum upwards from t
        term = math.exp(_log_binom_pmf(t, k, p))
        total = 0.0
        for b in range(t, k + 1):
            total += term
            if term < total * 1e-17:
                break
            term *= (k - b) / (b + 1) * ratio
        return total
    # t at or below the mode: 1 - P(X <= t - 1), summed downwards from t - 1
    term = math.exp(_log_binom_pmf(t - 1, k, p))
    lower = 0.0
    for b in range(t - 1, -1, -1):
        lower += term
        if term < lower * 1e-17:
            break
        term *= b / (k - b + 1) / ratio
    return max(0.0, 1.0 - lower)


@lru_cache(maxsize=1024)
def cases_needed(*, max_regression: float, confidence: float, discordance: float,
                 target: float = TARGET) -> int | None:
    """The smallest suite size from which on an equal canary passes with probability >= ``target``.

    None when more than ``MAX_CASES`` would be needed (a margin of 0 can never be shown).
    """
    if not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), got {target}")

    power = _curve(max_regression, confidence, discordance, 0.0).at
    if discordance == 0:
        target = 0.5  # the probability is 0 or 1: the first size that passes
    if max_regression <= 0:
        return None  # an equal canary then passes only as often as the test errs: ~1 - confidence
    # A bracket around the normal approximation d (z_a + z_b)^2 / m^2, widened until it holds...
    guess = discordance * (z_of(confidence) + z_of(max(target, 0.5))) ** 2 / max_regression ** 2
    if guess > 4 * MAX_CASES:
        return None
    low, high = int(guess * 0.6), int(guess * 1.5) + 16
    while low > 0 and power(low) >= target:
        low //= 2
    while power(high) < target + _clear(target, high * discordance):
        high *= 2
        if high > 2 * MAX_CASES:
            return None
    # ... bisection for a size where the probability crosses the target (power(0) is taken as 0)...
    while high - low > 1:
        mid = (low + high) // 2
        if power(mid) >= target:
            high = mid
        else:
            low = mid
    # ... then upwards until it is clearly above the target, keeping the last size still below it.
    clear = _clear(target, high * discordance) if discordance > 0 else 0.5
    needed = high
    n = high + 1
    while power(n - 1) < target + clear:
        if power(n) < target:
            needed = n + 1
        n += 1
    return needed if needed <= MAX_CASES else None


def two_stage_pass_probability(n: int, first: int, *, max_regression: float, first_confidence: float,
                               confidence: float, discordance: float, difference: float = 0.0) -> float:
    """Exact pass probability of a two-stage gate on a suite of ``n`` cases (docs/rollouts.md weighs it).

    Stage one evaluates ``first`` cases and passes at once when they pass the test at
    ``first_confidence``; otherwise the whole suite is evaluated and passes when it passes the test at
    ``confidence``. Summed over stage one's counts (k1, b1) and stage two's k2 exactly like
    ``pass_probability``.
    """
    if not 1 <= first < n:
        raise ValueError(f"the first stage must have 1 to n - 1 cases, got {first} of {n}")
    early = _curve(max_regression, first_confidence, discordance, difference)
    final = _curve(max_regression, confidence, discordance, difference)
    d, p = discordance, early.p_canary
    if d == 0:
        return float(early.passes(0, 0, first) or final.passes(0, 0, n))
    second = n - first
    lo1, hi1 = _k_range(first, d)
    lo2, hi2 = _k_range(second, d)
    weights2 = [(k2, math.exp(_log_binom_pmf(k2, second, d))) for k2 in range(lo2, hi2 + 1)]
    final_t: dict[int, int] = {}
    t: int | None = None
    for k in range(lo1 + lo2, hi1 + hi2 + 1):
        final_t[k] = t = final._threshold(k, n, t)
    tails: dict[tuple[int, int], float] = {}

    def tail(need: int, k: int) -> float:
        found = tails.get((need, k))
        if found is None:
            found = tails[(need, k)] = _upper_tail(need, k, p)
        return found

    total = 0.0
    t1: int | None = None
    for k1 in range(lo1, hi1 + 1):
        w1 = math.exp(_log_binom_pmf(k1, first, d))
        t1 = early._threshold(k1, first, t1)
        total += w1 * tail(t1, k1)  # passed at stage one
        for b1 in range(min(t1, k1 + 1)):  # not passed: the rest of the suite decides
            wb = w1 * math.exp(_log_binom_pmf(b1, k1, p))
            if wb < 1e-300:
                continue
            total += wb * sum(w2 * tail(final_t[k1 + k2] - b1, k2) for k2, w2 in weights2)
    return min(1.0, total)


def _clear(target: float, discordant: float) -> float:
    """How far above the target the probability must be before larger sizes are not checked.

    The zig-zag comes from the parity of the discordant count, so it shrinks like 1/sqrt of the
    expected count: about 0.06 at 1.3 discordant pairs, 0.016 at 6, 0.003 at 70 (measured on
    the sizing grid). A tenth over the square root stays above all of them; never below 0.01 nor
    above half the distance to 1.
    """
    return min(max(_CLEAR, 0.1 / math.sqrt(max(discordant, 1e-9))), (1 - target) / 2)


@dataclass(frozen=True)
class SequentialDesign:
    """A two-stage design calibrated against the fixed one (see ``compare_sequential``)."""

    first_confidence: float
    confidence: float  #: the final stage's, raised until the false promotions are the fixed design's
    false_promotion: float
    equal_pass: float


def compare_sequential(n: int, *, max_regression: float, discordance: float,
                       confidence: float = DEFAULT_CONFIDENCE,
                       first_confidences: Sequence[float] = (0.99, 0.995, 0.999)
                       ) -> tuple[float, float, tuple[SequentialDesign, ...]]:
    """The fixed design's (equal-canary pass, false promotion) and, for each stage-one confidence, the
    two-stage design (half the suite first) whose final confidence is the lowest (to 1e-4) at which
    its false-promotion rate, for a canary worse by exactly the margin, is not above the fixed one's.
    """
    def two_stage(first_confidence: float, final_confidence: float, difference: float) -> float:
        return two_stage_pass_probability(n, n // 2, max_regression=max_regression,
                                          first_confidence=first_confidence, confidence=final_confidence,
                                          discordance=discordance, difference=difference)

    fixed_pass = pass_probability(n, max_regression=max_regression, confidence=confidence,
                                  discordance=discordance)
    fixed_fp = pass_probability(n, max_regression=max_regression, confidence=confidence,
                                discordance=discordance, difference=-max_regression)
    designs = []
    for first_confidence in first_confidences:
        low, high = confidence, 0.9999
        if two_stage(first_confidence, low, -max_regression) <= fixed_fp:
            high = low
        while high - low > 1e-4:
            mid = (low + high) / 2
            if two_stage(first_confidence, mid, -max_regression) <= fixed_fp:
                high = mid
            else:
                low = mid
        designs.append(SequentialDesign(
            first_confidence, high, false_promotion=two_stage(first_confidence, high, -max_regression),
            equal_pass=two_stage(first_confidence, high, 0.0)))
    return fixed_pass, fixed_fp, tuple(designs)


@dataclass(frozen=True)
class PowerCheck:
    """Whether a suite is large enough for its gate: the numbers a condition and an Event show."""

    cases: int  #: cases in the suite
    max_regression: float
    confidence: float
    discordance: float  #: the one used: measured by the last evaluation (rounded up), or assumed
    measured: bool  #: ``discordance`` was measured (else ``ASSUMED_DISCORDANCE``)
    pass_probability: float  #: that an equal canary passes
    #: The size from which on it is at least ``TARGET``; computed only for an underpowered suite,
    #: and None beyond ``MAX_CASES``.
    cases_needed: int | None

    @property
    def underpowered(self) -> bool:
        return self.pass_probability < TARGET

    @property
    def message(self) -> str:
        source = "measured by the last evaluation" if self.measured else "assumed: none measured yet"
        head = (f"a canary exactly as good as stable passes this gate with probability "
                f"{_pct(self.pass_probability)} on {self.cases} cases (maxRegression "
                f"{self.max_regression:g}, confidence {self.confidence:g}, discordance "
                f"{self.discordance:.1%}, {source})")
        if not self.underpowered:
            return f"{head}; at least {TARGET:.0%}, enough"
        if self.cases_needed is None:
            return (f"{head}; more than {MAX_CASES:,} cases would be needed for {TARGET:.0%}: widen "
                    "maxRegression")
        return (f"{head}; {self.cases_needed:,} cases or more would give {TARGET:.0%}: until then a refusal "
                "says little (add cases or widen maxRegression)")


def _pct(p: float) -> str:
    """A probability as a percentage that never rounds to 80% when it is below it."""
    return f"{math.floor(p * 1000) / 10:.1f}%"


def rounded_discordance(measured: float) -> float:
    """A measured discordance rounded up to the next half point: conservative, and cacheable."""
    return min(1.0, math.ceil(round(measured * 200, 9)) / 200)


def assess(cases: int, *, max_regression: float, confidence: float, measured_discordance: float | None
           ) -> PowerCheck:
    """The power of a suite of ``cases`` for this gate, at the measured discordance if there is one.

    Cost (measured): the pass probability of one size takes under 5 ms; ``cases_needed`` (only for
    an underpowered suite) 40-150 ms for margins of 0.02 or more and discordances up to 15%, about
    0.5 s at a margin of 0.01; both are cached per gate and discordance.
    """
    if measured_discordance is None:
        discordance = ASSUMED_DISCORDANCE
    else:
        discordance = rounded_discordance(measured_discordance)
    probability = pass_probability(max(cases, 1), max_regression=max_regression, confidence=confidence,
                                   discordance=discordance)
    needed = None
    if probability < TARGET:
        needed = cases_needed(max_regression=max_regression, confidence=confidence, discordance=discordance)
    return PowerCheck(cases=cases, max_regression=max_regression, confidence=confidence,
                      discordance=discordance, measured=measured_discordance is not None,
                      pass_probability=probability, cases_needed=needed)


# --- the sizing table -------------------------------------------------------------------------

TABLE_DISCORDANCES = (0.02, 0.04, 0.06, 0.10, 0.15)
TABLE_MARGINS = (0.10, 0.05, 0.02)


def sizing_table(*, confidence: float = DEFAULT_CONFIDENCE,
                 discordances: Sequence[float] = TABLE_DISCORDANCES,
                 margins: Sequence[float] = TABLE_MARGINS) -> str:
    """The Markdown table of docs/rollouts.md: cases for 80% and 95% passes of an equal canary."""
    head = "| discordance d | " + " | ".join(
        f"m = {m:g}" + (" (default)" if m == DEFAULT_MAX_REGRESSION else "") for m in margins) + " |"
    rows = [head, "| --- |" + " --- |" * len(margins)]
    for d in discordances:
        cells = []
        for m in margins:
            n80 = cases_needed(max_regression=m, confidence=confidence, discordance=d, target=0.80)
            n95 = cases_needed(max_regression=m, confidence=confidence, discordance=d, target=0.95)
            cells.append(f"{_fmt(n80)} / {_fmt(n95)}")
        rows.append(f"| {d:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def sequential_table(n: int, *, max_regression: float, discordance: float,
                     confidence: float = DEFAULT_CONFIDENCE) -> str:
    """``compare_sequential`` as Markdown rows (docs/rollouts.md)."""
    fixed_pass, fixed_fp, designs = compare_sequential(n, max_regression=max_regression,
                                                       discordance=discordance, confidence=confidence)
    rows = [f"n = {n}, maxRegression {max_regression:g}, discordance {discordance:.0%}:", "",
            "| design | false promotion (worse by the margin) | equal canary passes |",
            "| --- | --- | --- |",
            f"| fixed, all {n} cases at {confidence:g} | {fixed_fp:.2%} | {fixed_pass:.2%} |"]
    for design in designs:
        rows.append(f"| {n // 2} first at {design.first_confidence:g}, then all {n} at "
                    f"{design.confidence:.4f} | {design.false_promotion:.2%} | {design.equal_pass:.2%} |")
    return "\n".join(rows)


def _fmt(n: int | None) -> str:
    return f"{n:,}" if n is not None else f"> {MAX_CASES:,}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelplane.rollout.power",
        description="Suite sizes at which the evaluation gate passes an equal canary with 80%% / 95%% "
                    "probability (exact), or the pass probability of one suite.")
    parser.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE)
    parser.add_argument("--cases", type=int, help="print the pass probability of this suite size instead")
    parser.add_argument("--max-regression", type=float, default=DEFAULT_MAX_REGRESSION)
    parser.add_argument("--discordance", type=float, default=ASSUMED_DISCORDANCE)
    parser.add_argument("--sequential", action="store_true",
                        help="compare two-stage designs with the fixed one at --cases (default 200)")
    args = parser.parse_args(argv)
    if args.sequential:
        print(sequential_table(args.cases or 200, max_regression=args.max_regression,
                               discordance=args.discordance, confidence=args.confidence))
        return 0
    if args.cases is not None:
        probability = pass_probability(args.cases, max_regression=args.max_regression,
                                       confidence=args.confidence, discordance=args.discordance)
        needed = cases_needed(max_regression=args.max_regression, confidence=args.confidence,
                              discordance=args.discordance)
        print(f"{args.cases} cases, maxRegression {args.max_regression:g}, confidence {args.confidence:g}, "
              f"discordance {args.discordance:g}: an equal canary passes with probability "
              f"{_pct(probability)}; {TARGET:.0%} from {_fmt(needed)} cases on")
        return 0
    print(sizing_table(confidence=args.confidence))
    return 0


if __name__ == "__main__":
    sys.exit(main())
