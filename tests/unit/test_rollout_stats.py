"""The statistical gate: exact cases, and Monte-Carlo error rates over many seeded rollouts."""

from __future__ import annotations

import random

import pytest

from modelplane.rollout.stats import (
    PairedOutcome,
    Verdict,
    evaluate_gate,
    non_inferior,
    outcomes_from_pairs,
    paired_diff_lower_bound,
    tango_score,
    wilson_lower_bound,
    wilson_upper_bound,
)


def pairs(both: int, canary_only: int, stable_only: int, neither: int) -> list[tuple[bool, bool]]:
    return ([(True, True)] * both + [(True, False)] * canary_only + [(False, True)] * stable_only
            + [(False, False)] * neither)


@pytest.mark.parametrize(
    ("b", "c", "n", "expected"),
    [
        # No discordant pairs: the bound is -z²/(n+z²) (z = 1.645), the known Tango limit.
        pytest.param(0, 0, 200, -(1.6449**2) / (200 + 1.6449**2), id="no-discordance-n200"),
        pytest.param(0, 0, 20, -(1.6449**2) / (20 + 1.6449**2), id="no-discordance-n20"),
        pytest.param(0, 200, 200, -1.0, id="all-regressions"),
    ],
)
def test_lower_bound_closed_forms(b: int, c: int, n: int, expected: float) -> None:
    assert paired_diff_lower_bound(b, c, n) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    ("b", "c", "n"),
    [pytest.param(5, 5, 200, id="balanced"), pytest.param(12, 3, 100, id="better"),
     pytest.param(2, 9, 50, id="worse"), pytest.param(1, 0, 5, id="tiny")],
)
def test_lower_bound_is_where_the_score_test_turns(b: int, c: int, n: int) -> None:
    bound = paired_diff_lower_bound(b, c, n)
    assert bound <= (b - c) / n
    assert tango_score(b, c, n, bound - 1e-4) >= 1.6448  # just below the bound: rejected
    assert tango_score(b, c, n, bound + 1e-4) < 1.6449  # just above: not rejected


def test_lower_bound_tightens_with_n_and_loosens_with_confidence() -> None:
    small = paired_diff_lower_bound(3, 3, 100)
    large = paired_diff_lower_bound(30, 30, 1000)
    assert small < large < 0
    assert paired_diff_lower_bound(3, 3, 100, confidence=0.99) < small


@pytest.mark.parametrize(
    ("counts", "min_score", "max_regression", "passed", "in_reason"),
    [
        pytest.param((170, 5, 5, 20), 0.8, 0.05, True, "clears", id="equal-large-suite-passes"),
        pytest.param((17, 1, 1, 1), 0.8, 0.05, False, "below -maxRegression", id="equal-tiny-suite-refused"),
        pytest.param((150, 5, 25, 20), 0.5, 0.05, False, "below -maxRegression", id="clearly-worse"),
        pytest.param((150, 30, 0, 20), 0.95, 0.05, False, "below the floor", id="better-but-under-floor"),
        pytest.param((180, 20, 0, 0), 0.9, 0.0, True, "clears", id="strictly-better-zero-margin"),
    ],
)
def test_gate_decisions(counts: tuple[int, int, int, int], min_score: float, max_regression: float,
                        passed: bool, in_reason: str) -> None:
    result = evaluate_gate(outcomes_from_pairs(pairs(*counts)), min_score=min_score,
                           max_regression=max_regression)
    assert result.passed is passed
    assert in_reason in result.reason
    both, b, c, neither = counts
    assert (result.n, result.canary_only, result.stable_only) == (sum(counts), b, c)
    assert result.canary_score == pytest.approx((both + b) / sum(counts))
    assert result.diff == pytest.approx((b - c) / sum(counts))


def test_gate_reports_failing_cases_regressions_first() -> None:
    result = evaluate_gate(outcomes_from_pairs(pairs(2, 0, 1, 1)), min_score=0.0)
    assert result.failing_case_ids == ("case-2", "case-3")  # case-2 stable got right: a regression


def test_empty_suite_never_passes() -> None:
    result = evaluate_gate((), min_score=0.0)
    assert not result.passed and result.n == 0 and "no cases" in result.reason
    assert result.verdict is Verdict.ERROR


# --- request errors: neither passes nor failures ----------------------------------------------------


def suite_with_errors(n: int, *, canary_right: range, stable_right: range, canary_failed: range = range(0),
                      stable_failed: range = range(0)) -> list[PairedOutcome]:
    """n cases; a failed request has no answer (the runner marks it an error, never right)."""
    return [
        PairedOutcome(f"case-{i:03d}", i in canary_right and i not in canary_failed,
                      i in stable_right and i not in stable_failed,
                      canary_error=i in canary_failed, stable_error=i in stable_failed)
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("outcomes", "verdict", "compared", "errors"),
    [
        # A base model without a chat template: every request of both revisions fails (HTTP 400/404).
        # Counted as wrong answers this was 0.000 vs 0.000 with no discordant pair: a pass from 133 cases.
        pytest.param(suite_with_errors(133, canary_right=range(0), stable_right=range(0),
                                       canary_failed=range(133), stable_failed=range(133)),
                     Verdict.ERROR, 0, (133, 133), id="everything-fails-on-both-133"),
        pytest.param(suite_with_errors(500, canary_right=range(0), stable_right=range(0),
                                       canary_failed=range(500), stable_failed=range(500)),
                     Verdict.ERROR, 0, (500, 500), id="everything-fails-on-both-500"),
        # Canary 0.82 vs stable 0.85; stable fails 20% of its requests (busy with user traffic). Counted
        # as wrong, stable's errors made the canary look 12 points better: a pass.
        pytest.param(suite_with_errors(200, canary_right=range(164), stable_right=range(170),
                                       stable_failed=range(40)),
                     Verdict.ERROR, 160, (0, 40), id="stable-fails-20pct"),
        # The same canary, stable failing on 10 cases (5%, within maxErrorRate): those pairs are left
        # out and the 6 regressions in 190 cases decide (main counted 10 fixes and passed it).
        pytest.param(suite_with_errors(200, canary_right=range(164), stable_right=range(170),
                                       stable_failed=range(10)),
                     Verdict.FAIL, 190, (0, 10), id="stable-fails-5pct-excluded"),
        # The canary's own errors are no regressions either: left out, not counted as wrong.
        pytest.param(suite_with_errors(400, canary_right=range(400), stable_right=range(400),
                                       canary_failed=range(20)),
                     Verdict.PASS, 380, (20, 0), id="canary-fails-5pct-excluded"),
        pytest.param(suite_with_errors(400, canary_right=range(400), stable_right=range(400),
                                       canary_failed=range(21)),
                     Verdict.ERROR, 379, (21, 0), id="canary-fails-just-over-5pct"),
        # A case failing on both sides is one excluded pair, not two.
        pytest.param(suite_with_errors(400, canary_right=range(400), stable_right=range(400),
                                       canary_failed=range(20), stable_failed=range(20)),
                     Verdict.PASS, 380, (20, 20), id="same-cases-fail-on-both"),
    ],
)
def test_errors_are_left_out_and_too_many_give_no_verdict(
        outcomes: list[PairedOutcome], verdict: Verdict, compared: int, errors: tuple[int, int]) -> None:
    result = evaluate_gate(outcomes, min_score=0.0)  # the defaults: maxRegression 0.02, maxErrorRate 0.05
    assert result.verdict is verdict
    assert result.passed is (verdict is Verdict.PASS) and result.errored is (verdict is Verdict.ERROR)
    assert (result.n, result.total, result.excluded) == (compared, len(outcomes), len(outcomes) - compared)
    assert (result.canary_errors, result.stable_errors) == errors
    if verdict is Verdict.ERROR:
        assert "no verdict" in result.reason and f"canary {errors[0]}, stable {errors[1]}" in result.reason
    elif result.excluded:
        assert f"{result.excluded} of {len(outcomes)} cases left out" in result.reason


@pytest.mark.parametrize(
    ("max_error_rate", "failed", "verdict"),
    [(0.0, 0, Verdict.PASS), (0.0, 1, Verdict.ERROR), (0.1, 40, Verdict.PASS), (0.1, 41, Verdict.ERROR),
     (1.0, 399, Verdict.FAIL), (1.0, 400, Verdict.ERROR)],
    ids=["zero-clean", "zero-one-error", "ten-pct-at-limit", "ten-pct-over", "one-compared-is-a-verdict",
         "all-failed"],
)
def test_max_error_rate_bounds_the_left_out_share(max_error_rate: float, failed: int,
                                                  verdict: Verdict) -> None:
    outcomes = suite_with_errors(400, canary_right=range(400), stable_right=range(400),
                                 stable_failed=range(failed))
    result = evaluate_gate(outcomes, min_score=0.0, max_regression=0.5, max_error_rate=max_error_rate)
    assert result.verdict is verdict


def test_bad_max_error_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="max_error_rate"):
        evaluate_gate((), min_score=0.0, max_error_rate=1.5)


@pytest.mark.parametrize(("b", "c", "n"), [(5, 5, 200), (12, 3, 100), (2, 9, 50), (0, 0, 133), (0, 0, 132),
                                           (30, 40, 1000), (1, 0, 5)])
@pytest.mark.parametrize("margin", [0.0, 0.02, 0.05, 0.1])
def test_the_decision_agrees_with_the_reported_bound(b: int, c: int, n: int, margin: float) -> None:
    # The gate decides with the score test at -margin; the bound it reports says the same.
    bound = paired_diff_lower_bound(b, c, n)
    assert non_inferior(b, c, n, max_regression=margin, confidence=0.95) is (bound >= -margin - 1e-8)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (5, 10), (10, 10), (85, 100)])
def test_wilson_bounds_bracket_the_estimate(k: int, n: int) -> None:
    assert 0 <= wilson_lower_bound(k, n) <= k / n <= wilson_upper_bound(k, n) <= 1


# --- Monte-Carlo: many simulated rollouts, fixed seeds (deterministic, not flaky) -----------------

ROLLOUTS = 1000


def simulate(*, n: int, stable_acc: float, canary_only: float, stable_only: float, min_score: float,
             max_regression: float, seed: int) -> float:
    """Fraction of rollouts the gate passes, for cases drawn with the given joint probabilities.

    ``canary_only``/``stable_only`` are the probabilities of the two discordant cells; the canary's
    true accuracy is stable_acc + canary_only - stable_only.
    """
    rng = random.Random(seed)
    p_both = stable_acc - stable_only
    passed = 0
    for _ in range(ROLLOUTS):
        drawn = []
        for _ in range(n):
            u = rng.random()
            if u < p_both:
                drawn.append((True, True))
            elif u < p_both + canary_only:
                drawn.append((True, False))
            elif u < p_both + canary_only + stable_only:
                drawn.append((False, True))
            else:
                drawn.append((False, False))
        result = evaluate_gate(outcomes_from_pairs(drawn), min_score=min_score, max_regression=max_regression)
        passed += result.passed
    return passed / ROLLOUTS


@pytest.mark.parametrize(
    ("n", "canary_only", "stable_only"),
    [
        # Worse by 6 and 10 points against a 5-point margin, at several discordance levels and sizes.
        pytest.param(200, 0.01, 0.07, id="n200-worse6-low-discordance"),
        pytest.param(200, 0.05, 0.11, id="n200-worse6-high-discordance"),
        pytest.param(50, 0.02, 0.08, id="n50-worse6"),
        pytest.param(30, 0.00, 0.10, id="n30-worse10"),
        pytest.param(500, 0.03, 0.09, id="n500-worse6"),
    ],
)
def test_a_checkpoint_worse_than_the_margin_is_promoted_at_most_5_percent(
        n: int, canary_only: float, stable_only: float) -> None:
    rate = simulate(n=n, stable_acc=0.85, canary_only=canary_only, stable_only=stable_only,
                    min_score=0.0, max_regression=0.05, seed=n)
    assert rate <= 0.05, f"promoted {rate:.1%} of truly worse checkpoints"


@pytest.mark.parametrize(
    ("n", "discordance"),
    [
        # Accuracy 0.85, margin 0.05, floor 0.80: sizes above the 95% column of the sizing table in
        # docs/rollouts.md (exact false refusals: 2.7%, 1.3% and 1.6%; test_rollout_power computes them).
        pytest.param(300, 0.05, id="n300-discordance5"),
        pytest.param(400, 0.06, id="n400-discordance6"),
        pytest.param(600, 0.10, id="n600-discordance10"),
    ],
)
def test_an_equal_checkpoint_is_rejected_at_most_5_percent(n: int, discordance: float) -> None:
    rate = simulate(n=n, stable_acc=0.85, canary_only=discordance / 2, stable_only=discordance / 2,
                    min_score=0.80, max_regression=0.05, seed=n + 1)
    assert 1 - rate <= 0.05, f"rejected {1 - rate:.1%} of equal checkpoints"


def test_small_suites_cannot_show_non_inferiority() -> None:
    # The flip side of the guarantee: at n=100 an equal checkpoint is often refused; docs explain why.
    rate = simulate(n=100, stable_acc=0.85, canary_only=0.03, stable_only=0.03, min_score=0.0,
                    max_regression=0.05, seed=7)
    assert rate < 0.8
