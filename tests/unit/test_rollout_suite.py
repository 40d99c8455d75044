"""Suite parsing (errors name line and field) and the graders' normalisation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelplane.rollout.graders import Grader, choice_letter, first_number, grade, normalize, validate_schema
from modelplane.rollout.suite import Case, SuiteError, parse_suite


def line(**fields: Any) -> str:
    return json.dumps(fields)


def one(**fields: Any) -> Case:
    fields.setdefault("id", "c1")
    if "messages" not in fields:
        fields.setdefault("prompt", "q?")
    return parse_suite(line(**fields)).cases[0]


def test_parses_a_mixed_suite() -> None:
    text = "\n".join([
        "# comments and blank lines are skipped",
        line(id="a", prompt="Capital of France?", expected="Paris"),
        "",
        line(id="b",
             messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2"}],
             expected=4, grader="numeric", tolerance=0.5, max_tokens=8, temperature=0),
        line(id="c", prompt="Pick", choices=["red", "blue"], expected="B", grader="choice"),
        line(id="d", prompt="JSON", schema={"type": "object", "required": ["x"]}, grader="json_schema"),
        line(id="e", prompt="x", expected=["^yes", "^sure"], grader="regex"),
    ])
    suite = parse_suite(text, source="cm/suite.jsonl")
    assert [c.id for c in suite.cases] == ["a", "b", "c", "d", "e"]
    assert suite.cases[0].grader is Grader.EXACT and suite.cases[0].line == 2
    assert suite.cases[1].chat_messages()[0] == {"role": "system", "content": "Be brief."}
    assert suite.cases[0].chat_messages() == [{"role": "user", "content": "Capital of France?"}]
    assert suite.cases[1].max_tokens == 8 and suite.cases[1].tolerance == 0.5
    assert len(suite.cases[4].patterns) == 2
    assert not suite.needs_judge


@pytest.mark.parametrize(
    ("text", "line_no", "field", "message"),
    [
        pytest.param('{"id": "a", "prompt": ', 1, "", "bad JSON", id="bad-json"),
        pytest.param('["not", "an", "object"]', 1, "", "JSON object", id="not-object"),
        pytest.param(line(id="a", prompt="q", expected="x", grader="fuzzy"), 1, "grader", "unknown grader",
                     id="unknown-grader"),
        pytest.param(line(id="a", prompt="q"), 1, "expected", "missing", id="missing-expected"),
        pytest.param(line(id="a", prompt="q", expected="(unclosed", grader="regex"), 1, "expected",
                     "invalid regex", id="invalid-regex"),
        pytest.param(line(id="a", prompt="q", expected="x") + "\n" + line(id="a", prompt="r", expected="y"),
                     2, "id", "duplicate id 'a' (first on line 1)", id="duplicate-id"),
        pytest.param(line(prompt="q", expected="x"), 1, "id", "missing", id="missing-id"),
        pytest.param(line(id="a", expected="x"), 1, "prompt", "exactly one", id="no-prompt"),
        pytest.param(line(id="a", prompt="q", messages=[{"role": "user", "content": "q"}], expected="x"),
                     1, "prompt", "exactly one", id="prompt-and-messages"),
        pytest.param(line(id="a", messages=[{"role": "wizard", "content": "q"}], expected="x"), 1,
                     "messages[0]", "role", id="bad-role"),
        pytest.param(line(id="a", prompt="q", expected="x", expcted="y"), 1, "expcted", "unknown field",
                     id="typo-field"),
        pytest.param(line(id="a", prompt="q", expected="many", grader="numeric"), 1, "expected",
                     "not a number", id="numeric-expected"),
        pytest.param(line(id="a", prompt="q", expected="C", choices=["x", "y"], grader="choice"), 1,
                     "expected", "beyond the 2 choices", id="choice-out-of-range"),
        pytest.param(line(id="a", prompt="q", expected="x", tolerance=1), 1, "tolerance", "only the numeric",
                     id="tolerance-wrong-grader"),
        pytest.param(line(id="a", prompt="q", grader="json_schema", schema={"type": "object", "if": {}}), 1,
                     "schema", "unsupported keyword 'if'", id="schema-keyword"),
        pytest.param(line(id="a", prompt="q", grader="json_schema"), 1, "schema", "needs 'schema'",
                     id="schema-missing"),
        pytest.param(line(id="a", prompt="q", expected="x", max_tokens=0), 1, "max_tokens", "≥ 1",
                     id="max-tokens"),
        pytest.param(line(id="a", prompt="q", expected="x", temperature=5), 1, "temperature", "[0, 2]",
                     id="temperature"),
        pytest.param("\n# only a comment\n", 0, "", "no cases", id="empty"),
    ],
)
def test_problems_name_line_and_field(text: str, line_no: int, field: str, message: str) -> None:
    with pytest.raises(SuiteError) as info:
        parse_suite(text, source="suite.jsonl")
    matching = [p for p in info.value.problems if p.line == line_no and p.field == field]
    assert matching, info.value.problems
    assert any(message in p.message for p in matching), matching
    assert str(info.value).startswith("suite.jsonl: line")


def test_all_problems_are_reported_at_once() -> None:
    text = line(id="a", prompt="q") + "\n" + line(id="b", prompt="q", expected="x", grader="nope")
    with pytest.raises(SuiteError) as info:
        parse_suite(text)
    assert [(p.line, p.field) for p in info.value.problems] == [(1, "expected"), (2, "grader")]


@pytest.mark.parametrize(
    ("case_fields", "answer", "correct"),
    [
        pytest.param({"expected": "Paris"}, "  paris. ", True, id="exact-normalised"),
        pytest.param({"expected": "Paris"}, "Paris, France", False, id="exact-extra-words"),
        pytest.param({"expected": ["NYC", "New York"]}, "new york", True, id="exact-alternatives"),
        pytest.param({"expected": "Paris", "grader": "contains"}, "It is PARIS.", True, id="contains"),
        pytest.param({"expected": "Lyon", "grader": "contains"}, "It is Paris.", False, id="contains-no"),
        pytest.param({"expected": r"^\d{3}-\d{4}$", "grader": "regex"}, " 555-1234\n", True, id="regex"),
        pytest.param({"expected": r"^\d{3}$", "grader": "regex"}, "5551", False, id="regex-no"),
        pytest.param({"expected": 42, "grader": "numeric"}, "The answer is 42.", True, id="numeric-first"),
        pytest.param({"expected": 1234.5, "grader": "numeric"}, "about 1,234.5 tokens", True,
                     id="numeric-thousands"),
        pytest.param({"expected": 3.14, "grader": "numeric", "tolerance": 0.01}, "pi is 3.1416", True,
                     id="numeric-tolerance"),
        pytest.param({"expected": 3.14, "grader": "numeric"}, "pi is 3.1416", False, id="numeric-exact"),
        pytest.param({"expected": -2, "grader": "numeric"}, "x = -2", True, id="numeric-negative"),
        pytest.param({"expected": "12", "grader": "numeric"}, "12 then 13", True, id="numeric-string"),
        pytest.param({"expected": 5, "grader": "numeric"}, "no idea", False, id="numeric-none"),
        pytest.param({"expected": "B", "grader": "choice"}, "B", True, id="choice-letter"),
        pytest.param({"expected": "B", "grader": "choice"}, "B) blue", True, id="choice-paren"),
        pytest.param({"expected": "B", "grader": "choice"}, "(b)", True, id="choice-wrapped"),
        pytest.param({"expected": "B", "grader": "choice"}, "Answer: B", True, id="choice-answer-colon"),
        pytest.param({"expected": "B", "grader": "choice"}, "The answer is (B).", True, id="choice-sentence"),
        pytest.param({"expected": "B", "grader": "choice"}, "A. red", False, id="choice-wrong"),
        pytest.param({"expected": "B", "grader": "choice", "choices": ["red", "blue"]}, "Blue", True,
                     id="choice-by-text"),
        pytest.param({"expected": "A", "grader": "choice", "choices": ["red", "blue"]}, "Because...", False,
                     id="choice-word-starting-with-letter"),
        pytest.param({"grader": "json_schema", "schema": {"type": "object", "required": ["a"],
                      "properties": {"a": {"type": "integer", "minimum": 1}}}},
                     '```json\n{"a": 3}\n```', True, id="json-fenced"),
        pytest.param({"grader": "json_schema", "schema": {"type": "object", "required": ["a"]}}, '{"b": 1}',
                     False, id="json-missing-required"),
        pytest.param({"grader": "json_schema", "schema": {"type": "object"}}, "not json", False,
                     id="json-invalid"),
        pytest.param({"grader": "json_schema", "expected": {"a": 1}}, '{"a": 1}', True, id="json-expected"),
    ],
)
def test_graders(case_fields: dict[str, Any], answer: str, correct: bool) -> None:
    assert grade(answer, one(**case_fields)) is correct


def test_judge_cases_need_the_runner() -> None:
    with pytest.raises(ValueError, match="judge"):
        grade("x", one(expected="ref", grader="judge"))


@pytest.mark.parametrize(
    ("text", "normal"),
    [("  Hello   World. ", "hello world"), ("Paris...", "paris"), ("ÉCOLE", "école"), ("", "")],
)
def test_normalize(text: str, normal: str) -> None:
    assert normalize(text) == normal


@pytest.mark.parametrize(
    ("text", "number"),
    [("x 1e3 y", 1000.0), ("-0.5", -0.5), ("v1,234,567", 1234567.0), ("12,34", 12.0), ("none", None)],
)
def test_first_number(text: str, number: float | None) -> None:
    assert first_number(text) == number


def test_choice_letter_respects_the_options() -> None:
    assert choice_letter("E", letters="ABCD") is None
    assert choice_letter("answer - d", letters="ABCD") == "D"


@pytest.mark.parametrize(
    ("value", "schema", "ok"),
    [
        ({"a": [1, 2]}, {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"},
                                                                 "minItems": 2}}}, True),
        ({"a": [1, "x"]}, {"properties": {"a": {"items": {"type": "integer"}}}}, False),
        ({"a": 1, "b": 2}, {"additionalProperties": False, "properties": {"a": {}}}, False),
        ("red", {"enum": ["red", "blue"]}, True),
        ("abc", {"type": "string", "pattern": "^a", "maxLength": 2}, False),
        (True, {"type": "integer"}, False),
        (2.0, {"type": "integer"}, True),
        (5, {"anyOf": [{"type": "string"}, {"minimum": 3}]}, True),
        (5, {"oneOf": [{"type": "integer"}, {"minimum": 3}]}, False),
        (None, {"not": {"type": "null"}}, False),
    ],
)
def test_schema_validator(value: Any, schema: dict[str, Any], ok: bool) -> None:
    assert (validate_schema(value, schema) == []) is ok
