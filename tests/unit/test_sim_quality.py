"""The quality model: it solves its tasks, is deterministic, hits its accuracy, tells checkpoints apart."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from modelplane_dev.sim.quality import (
    BehaviorMap,
    SimBehavior,
    TaskKind,
    answer,
    case_prompt,
    count_tokens,
    filler_text,
    generate_suite,
    judge_verdict,
    parse_behaviors,
    read_behaviors,
    solve,
    split_tokens,
    suite_jsonl,
)


def _grade(case: dict[str, Any], output: str) -> bool:
    """A minimal reading of each grader, enough to check that the simulator's answers are right or wrong."""
    grader, expected = case["grader"], case["expected"]
    if grader == "exact":
        return bool(output.strip() == expected)
    if grader == "contains":
        return bool(expected in output)
    if grader == "regex":
        return re.search(expected, output) is not None
    if grader == "numeric":
        return bool(abs(float(output) - expected) <= case["tolerance"])
    if grader == "choice":
        return bool(output.strip()[:1] == expected)
    if grader == "json_schema":
        obj = json.loads(output)
        schema = case["schema"]
        return all(k in obj for k in schema["required"]) and all(
            obj.get(k) == spec["const"] for k, spec in schema["properties"].items())
    raise AssertionError(f"unknown grader {grader}")


SUITE = generate_suite(400, seed=11)


@pytest.mark.parametrize("kind", list(TaskKind), ids=[k.value for k in TaskKind])
def test_the_simulator_solves_every_task_kind_and_its_wrong_answers_fail(kind: TaskKind) -> None:
    cases = [c for c in SUITE if c["id"].startswith(kind.value)]
    assert len(cases) == 50
    for case in cases:
        solution = solve(case_prompt(case), rng=random.Random(case["id"]))
        assert solution is not None and solution.kind is kind, case
        assert _grade(case, solution.correct), (case, solution)
        assert not _grade(case, solution.wrong), (case, solution)


def test_suite_lines_have_the_case_format() -> None:
    lines = suite_jsonl(SUITE[:16]).splitlines()
    assert len(lines) == 16
    for line in lines:
        case = json.loads(line)
        assert {"id", "expected", "grader"} <= set(case)
        assert ("prompt" in case) != ("messages" in case)
        assert case["grader"] in {"exact", "contains", "regex", "json_schema", "numeric", "choice"}
    assert generate_suite(20, seed=5) == generate_suite(20, seed=5)
    assert generate_suite(20, seed=5) != generate_suite(20, seed=6)


def test_answers_are_deterministic_for_seed_checkpoint_and_prompt() -> None:
    behavior = SimBehavior(accuracy=0.5)
    prompts = [case_prompt(c) for c in SUITE[:80]]

    def run(checkpoint: str, seed: int) -> list[str]:
        return [answer(p, checkpoint=checkpoint, behavior=behavior, seed=seed).text for p in prompts]

    assert run("m@a", 0) == run("m@a", 0)
    assert run("m@a", 0) != run("m@b", 0)
    assert run("m@a", 0) != run("m@a", 1)


@pytest.mark.parametrize("accuracy", [0.0, 0.3, 0.6, 0.9, 1.0], ids=["0", "0.3", "0.6", "0.9", "1"])
def test_empirical_accuracy_is_the_configured_one(accuracy: float) -> None:
    suite = generate_suite(2000, seed=3)
    behavior = SimBehavior(accuracy=accuracy)
    right = sum(_grade(c, answer(case_prompt(c), checkpoint="org/m@rev", behavior=behavior).text)
                for c in suite)
    # Binomial standard error at n=2000 is at most 1.1 points; allow 4 of them.
    assert right / len(suite) == pytest.approx(accuracy, abs=0.045)


def test_a_good_and_a_bad_checkpoint_are_told_apart() -> None:
    suite = generate_suite(200, seed=8)

    def score(checkpoint: str, accuracy: float) -> float:
        behavior = SimBehavior(accuracy=accuracy)
        return sum(_grade(c, answer(case_prompt(c), checkpoint=checkpoint, behavior=behavior).text)
                   for c in suite) / len(suite)

    good, bad = score("llama@good-ft", 0.92), score("llama@bad-ft", 0.70)
    assert good - bad > 0.12


@pytest.mark.parametrize("tokens", [1, 7, 64, 300], ids=["1", "7", "64", "300"])
def test_filler_text_has_exactly_the_requested_tokens(tokens: int) -> None:
    text = filler_text("seed", tokens)
    assert count_tokens(text) == tokens == len(split_tokens(text))
    assert filler_text("seed", tokens) == text


def test_unrecognised_prompts_get_filler() -> None:
    reply = answer("Tell me a story about a lighthouse.", checkpoint="m@r", behavior=SimBehavior(), seed=0,
                   default_tokens=20)
    assert not reply.evaluated and count_tokens(reply.text) == 20


@pytest.mark.parametrize(("text", "model", "revision", "expected"), [
    ("", "m", "r", SimBehavior()),
    ("'*': {accuracy: 0.5}", "m", "r", SimBehavior(accuracy=0.5)),
    ('{"*": {"accuracy": 0.5}, "r": {"accuracy": 0.7, "error_rate": 0.1}}', "m", "r",
     SimBehavior(accuracy=0.7, error_rate=0.1)),
    ("r: {accuracy: 0.7}\nm@r: {latency_factor: 3, load_seconds: 2}", "m", "r",
     SimBehavior(latency_factor=3.0, load_seconds=2.0)),
    ("m: {accuracy: 0.4}", "m", None, SimBehavior(accuracy=0.4)),
], ids=["empty", "default-only", "json-by-revision", "model-at-revision-wins", "by-model"])
def test_behaviour_lookup(text: str, model: str, revision: str | None, expected: SimBehavior) -> None:
    assert parse_behaviors(text).for_checkpoint(model, revision) == expected


@pytest.mark.parametrize("text", [
    "r: {accuracy: 1.5}", "r: {error_rate: -0.1}", "r: {latency_factor: 0}", "r: {speed: 2}", "- 1", "r: 3",
], ids=["accuracy>1", "negative-error-rate", "zero-latency-factor", "unknown-field", "not-a-mapping",
        "scalar-behaviour"])
def test_bad_behaviours_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_behaviors(text)


def test_read_behaviors_from_file_then_env(tmp_path: Any) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("r: {accuracy: 0.2}\n")
    from_file = read_behaviors(env={"MODELPLANE_SIM_BEHAVIOR_FILE": str(path),
                                    "MODELPLANE_SIM_BEHAVIORS": "r: {accuracy: 0.3}"})
    from_env = read_behaviors(env={"MODELPLANE_SIM_BEHAVIORS": "r: {accuracy: 0.3}"})
    assert from_file.for_checkpoint("m", "r").accuracy == 0.2
    assert from_env.for_checkpoint("m", "r").accuracy == 0.3
    assert read_behaviors(env={}) == BehaviorMap()


@pytest.mark.parametrize(("reference", "candidate", "verdict"), [
    ("391", "391", True), ("Paris", "It is paris.", True), ("391", "392", False),
    ("", "anything", False),
], ids=["equal", "contains-any-case", "different", "empty-reference"])
def test_judge_verdict(reference: str, candidate: str, verdict: bool) -> None:
    prompt = (f"You grade answers. Question:\nuser: What?\n\nReference answer:\n{reference}\n\n"
              f"Candidate answer:\n{candidate}\n\nIs the candidate answer correct and consistent with "
              "the reference? Reply with exactly one word: YES or NO.")
    assert judge_verdict(prompt) is verdict


def test_a_judge_is_right_with_its_accuracy() -> None:
    prompts = [f"Reference answer:\n{i}\n\nCandidate answer:\n{i}\n\nIs the candidate answer correct "
               "and consistent with the reference?" for i in range(2000)]
    yes = sum(answer(p, checkpoint="judge", behavior=SimBehavior(accuracy=0.8)).text == "YES"
              for p in prompts)
    assert 0.77 < yes / len(prompts) < 0.83
    assert judge_verdict("What is 2 + 2? Answer with a number only.") is None
