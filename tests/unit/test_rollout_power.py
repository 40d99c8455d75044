"""The gate's power, computed exactly: checked against a brute-force enumeration, against a scan of
every suite size, against simulated rollouts, and against the sizing table of docs/rollouts.md."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest

from modelplane.rollout import power
from modelplane.rollout.power import (
    ASSUMED_DISCORDANCE,
    TARGET,
    assess,
    cases_needed,
    compare_sequential,
    pass_probability,
    rounded_discordance,
    sizing_table,
    two_stage_pass_probability,
)
from modelplane.rollout.stats import evaluate_gate, non_inferior, outcomes_from_pairs

DOCS = Path(__file__).resolve().parents[2] / "docs" / "rollouts.md"


def brute_force(n: int, *, max_regression: float, discordance: float, difference: float = 0.0,
                confidence: float = 0.95) -> float:
    """Every (b, c) of the trinomial, each decided by the gate's own test: no thresholds, no window."""
    p_b, p_c = (discordance + difference) / 2, (discordance - difference) / 2
    total = 0.0
    for b in range(n + 1):
        for c in range(n - b + 1):
            if non_inferior(b, c, n, max_regression=max_regression, confidence=confidence):
                total += (math.comb(n, b) * math.comb(n - b, c) * p_b ** b * p_c ** c
                          * (1 - discordance) ** (n - b - c))
    return total


@pytest.mark.parametrize(
    ("n", "max_regression", "discordance", "difference", "confidence"),
    [
        pytest.param(10, 0.2, 0.3, 0.0, 0.95, id="tiny"),
        pytest.param(40, 0.1, 0.1, 0.0, 0.95, id="n40-equal"),
        pytest.param(40, 0.1, 0.1, -0.1, 0.95, id="n40-worse-by-the-margin"),
        pytest.param(60, 0.05, 0.3, -0.05, 0.9, id="n60-high-discordance-conf90"),
        pytest.param(120, 0.05, 0.06, 0.0, 0.99, id="n120-conf99"),
        pytest.param(133, 0.02, 0.0, 0.0, 0.95, id="no-discordance-passes-from-133"),
        pytest.param(132, 0.02, 0.0, 0.0, 0.95, id="no-discordance-refused-at-132"),
        pytest.param(200, 0.02, 0.06, 0.0, 0.95, id="n200-defaults"),
        pytest.param(200, 0.05, 0.08, -0.05, 0.95, id="n200-false-promotion"),
    ],
)
def test_pass_probability_is_the_full_enumeration(n: int, max_regression: float, discordance: float,
                                                  difference: float, confidence: float) -> None:
    exact = pass_probability(n, max_regression=max_regression, confidence=confidence,
                             discordance=discordance, difference=difference)
    assert exact == pytest.approx(brute_force(n, max_regression=max_regression, discordance=discordance,
                                              difference=difference, confidence=confidence), abs=1e-12)


@pytest.mark.parametrize(("n", "d"), [(200_000, 0.001), (2000, 0.01), (50, 0.5), (100_000, 0.3), (1, 0.1),
                                      (20, 0.99), (5000, 0.02), (300, 0.15)])
def test_the_discordant_counts_left_out_weigh_nothing(n: int, d: float) -> None:
    lo, hi = power._k_range(n, d)
    kept = math.fsum(math.exp(power._log_binom_pmf(k, n, d)) for k in range(lo, hi + 1))
    assert 1 - kept < 1e-12


def test_the_defaults_refuse_most_equal_canaries_on_200_cases() -> None:
    """The defect: maxRegression 0.02 at 95% on a 200-case suite refuses an equal canary 52% of the
    time when the two revisions differ on 2% of the cases, 68% at 5%, 78% at 10%, 86% at 25%."""
    refused = {d: 1 - pass_probability(200, max_regression=0.02, confidence=0.95, discordance=d)
               for d in (0.02, 0.05, 0.10, 0.25)}
    assert refused == pytest.approx({0.02: 0.5165, 0.05: 0.6809, 0.10: 0.7849, 0.25: 0.8597}, abs=1e-4)


def test_the_old_sizing_rows_were_not_what_they_said() -> None:
    # docs/rollouts.md promised false refusals <= 5% at "~175 cases" for d = 4%, m = 0.05: 11%.
    assert 1 - pass_probability(175, max_regression=0.05, confidence=0.95, discordance=0.04) > 0.11
    assert cases_needed(max_regression=0.05, confidence=0.95, discordance=0.04, target=0.95) == 220


def test_exact_agrees_with_simulated_rollouts() -> None:
    rng = random.Random(11)
    n, d, rollouts = 200, 0.06, 2000
    passed = 0
    for _ in range(rollouts):
        draws = [rng.random() for _ in range(n)]
        pairs = [(u < d / 2, d / 2 <= u < d) if u < d else (True, True) for u in draws]
        passed += evaluate_gate(outcomes_from_pairs(pairs), min_score=0.0, max_regression=0.02).passed
    exact = pass_probability(n, max_regression=0.02, confidence=0.95, discordance=d)
    standard_error = math.sqrt(exact * (1 - exact) / rollouts)
    assert abs(passed / rollouts - exact) < 4 * standard_error


def scanned(max_regression: float, discordance: float, target: float) -> int:
    """One after the last size below the target, scanning every size until 99.5% and 20% beyond."""
    last_below, n, stop = 0, 1, None
    while stop is None or n <= stop:
        p = pass_probability(n, max_regression=max_regression, confidence=0.95, discordance=discordance)
        if p < target:
            last_below = n
        if p >= 0.995 and stop is None:
            stop = int(n * 1.2) + 10
        n += 1
    return last_below + 1


@pytest.mark.parametrize("target", [0.8, 0.95])
@pytest.mark.parametrize(
    ("max_regression", "discordance"),
    [(0.1, 0.02), (0.1, 0.04), (0.1, 0.15), (0.05, 0.02), (0.05, 0.06), (0.05, 0.1), (0.15, 0.005)],
    # (0.1, 0.04) at 80%: 42 cases reach 82.5% but 48 fall back to 79.7%, so 49 is the answer
)
def test_cases_needed_is_where_the_probability_stays_above_the_target(
        max_regression: float, discordance: float, target: float) -> None:
    needed = cases_needed(max_regression=max_regression, confidence=0.95, discordance=discordance,
                          target=target)
    assert needed == scanned(max_regression, discordance, target)


@pytest.mark.parametrize(
    ("max_regression", "discordance", "needed"),
    [(0.02, 0.0, 133), (0.05, 0.0, 52), (0.0, 0.05, None), (1.0, 0.3, 1)],
    ids=["no-discordance-closed-form", "no-discordance-m005", "zero-margin-never", "margin-one-always"],
)
def test_cases_needed_edges(max_regression: float, discordance: float, needed: int | None) -> None:
    assert cases_needed(max_regression=max_regression, confidence=0.95, discordance=discordance) == needed


def test_the_sizing_table_in_the_docs_is_the_computed_one() -> None:
    table = sizing_table()
    docs = DOCS.read_text(encoding="utf-8")
    assert table in docs, "docs/rollouts.md: paste the output of `python -m modelplane.rollout.power`"
    rows = [r for r in table.splitlines() if re.match(r"\| \d+% \|", r)]
    assert len(rows) == len(power.TABLE_DISCORDANCES)


def test_a_second_stage_buys_no_power_at_the_same_false_promotion_rate() -> None:
    # Half the suite first, passing at once on a stricter bound, the whole suite otherwise; the final
    # bound is raised until false promotions are no more than the fixed design's. It passes fewer
    # equal canaries than simply evaluating the whole suite.
    fixed_pass, fixed_fp, designs = compare_sequential(200, max_regression=0.05, discordance=0.06)
    assert fixed_pass == pytest.approx(0.8465, abs=1e-4) and fixed_fp == pytest.approx(0.0389, abs=1e-4)
    assert len(designs) == 3
    for design in designs:
        assert design.false_promotion <= fixed_fp + 1e-12
        assert design.equal_pass < fixed_pass


def test_a_first_stage_that_never_passes_is_the_fixed_design() -> None:
    fixed = pass_probability(300, max_regression=0.05, confidence=0.95, discordance=0.06)
    never_early = two_stage_pass_probability(300, 150, max_regression=0.05, first_confidence=1 - 1e-12,
                                             confidence=0.95, discordance=0.06)
    assert never_early == pytest.approx(fixed, abs=1e-12)


@pytest.mark.parametrize(
    ("cases", "measured", "discordance", "underpowered", "needed"),
    [
        pytest.param(200, None, ASSUMED_DISCORDANCE, True, 1565, id="assumed-before-the-first-run"),
        pytest.param(200, 0.02, 0.02, True, 401, id="measured-low"),
        pytest.param(200, 0.0601, 0.065, True, 1040, id="measured-rounded-up"),
        pytest.param(2000, None, ASSUMED_DISCORDANCE, False, None, id="large-enough"),
        pytest.param(150, 0.0, 0.0, False, None, id="identical-answers"),
    ],
)
def test_assess(cases: int, measured: float | None, discordance: float, underpowered: bool,
                needed: int | None) -> None:
    check = assess(cases, max_regression=0.02, confidence=0.95, measured_discordance=measured)
    assert check.discordance == pytest.approx(discordance) and check.measured is (measured is not None)
    assert check.underpowered is underpowered and check.cases_needed == needed
    assert (check.pass_probability < TARGET) is underpowered
    if underpowered:
        assert f"{needed:,} cases or more would give 80%" in check.message
    else:
        assert "enough" in check.message


@pytest.mark.parametrize(("measured", "rounded"), [(0.0, 0.0), (0.03, 0.03), (0.0301, 0.035), (0.061, 0.065),
                                                    (0.9999, 1.0), (1.0, 1.0)])
def test_rounded_discordance_rounds_up_to_half_a_point(measured: float, rounded: float) -> None:
    assert rounded_discordance(measured) == pytest.approx(rounded)


def test_the_percentage_is_truncated_so_it_never_reads_as_the_target() -> None:
    check = assess(964, max_regression=0.02, confidence=0.95, measured_discordance=0.06)
    assert check.underpowered and check.pass_probability == pytest.approx(0.79867, abs=1e-5)
    assert "probability 79.8% on 964 cases" in check.message
    assert power._pct(0.79999) == "79.9%"


@pytest.mark.parametrize("bad", [dict(discordance=1.2), dict(discordance=0.01, difference=-0.05),
                                 dict(discordance=0.1, confidence=1.0)])
def test_bad_arguments_are_refused(bad: dict[str, float]) -> None:
    args: dict[str, float] = dict(max_regression=0.05, confidence=0.95) | bad
    with pytest.raises(ValueError):
        pass_probability(100, **args)
