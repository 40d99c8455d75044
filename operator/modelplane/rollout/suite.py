"""Evaluation suites: the JSONL format a ConfigMap carries, parsed into frozen cases.

One JSON object per line::

    {"id": "capital-fr", "prompt": "Capital of France? One word.", "expected": "Paris", "grader": "exact"}
    {"id": "sum", "messages": [{"role": "user", "content": "2+2?"}], "expected": 4, "grader": "numeric",
     "tolerance": 0}
    {"id": "mcq-1", "prompt": "…", "choices": ["red", "blue"], "expected": "B", "grader": "choice"}
    {"id": "json", "prompt": "…", "schema": {"type": "object", "required": ["name"]},
     "grader": "json_schema"}

Fields: ``id`` (unique), exactly one of ``prompt`` / ``messages``, ``expected``, ``grader`` (default
``exact``), and per grader ``tolerance`` (numeric, absolute), ``schema`` (json_schema), ``choices``
(choice); optional ``max_tokens`` and ``temperature`` override the run's sampling parameters, and
``meta`` is free-form and ignored. Blank lines and lines starting with ``#`` are skipped. Every problem
is reported at once, each naming its line and field, so a suite is fixed in one pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelplane.rollout.graders import Grader, check_schema, first_number

_KNOWN_FIELDS = frozenset({
    "id", "prompt", "messages", "expected", "grader", "tolerance", "schema", "choices",
    "max_tokens", "temperature", "meta",
})
_ROLES = frozenset({"system", "user", "assistant", "developer", "tool"})


@dataclass(frozen=True)
class Case:
    """One evaluation case."""

    id: str
    expected: Any  #: a string, a number, a list of accepted alternatives, or JSON (json_schema)
    grader: Grader = Grader.EXACT
    prompt: str | None = None
    messages: tuple[Mapping[str, str], ...] | None = None
    tolerance: float | None = None
    schema: Any = None
    choices: tuple[str, ...] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    line: int = 0
    #: Compiled ``expected`` patterns of a regex case (compiled once, at parse time).
    patterns: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)

    def chat_messages(self) -> list[dict[str, str]]:
        """The case as chat messages (a bare prompt becomes one user message)."""
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]


@dataclass(frozen=True)
class Suite:
    cases: tuple[Case, ...]
    source: str = "suite.jsonl"

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def needs_judge(self) -> bool:
        return any(c.grader is Grader.JUDGE for c in self.cases)


@dataclass(frozen=True)
class Problem:
    line: int
    field: str  #: the field at fault, or "" for the line as a whole
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", field {self.field!r}" if self.field else "")
        return f"{where}: {self.message}"


class SuiteError(ValueError):
    """The suite cannot be used; ``problems`` lists every reason, each with its line and field."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        shown = "; ".join(str(p) for p in self.problems[:10])
        more = f" (and {len(self.problems) - 10} more)" if len(self.problems) > 10 else ""
        super().__init__(f"{source}: {shown}{more}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_expected(grader: Grader, raw: Mapping[str, Any], line: int) -> list[Problem]:
    problems: list[Problem] = []
    expected = raw.get("expected")
    if grader is Grader.JSON_SCHEMA:
        if "schema" not in raw and "expected" not in raw:
            problems.append(Problem(line, "schema", "a json_schema case needs 'schema' (or 'expected')"))
        return problems
    if "expected" not in raw or expected is None:
        return [Problem(line, "expected", f"missing; the {grader.value} grader compares against it")]
    alternatives = expected if isinstance(expected, list) else [expected]
    if not alternatives:
        return [Problem(line, "expected", "an empty list accepts no answer")]
    if grader is Grader.NUMERIC:
        for value in alternatives:
            if not _is_number(value) and (not isinstance(value, str) or first_number(value) is None):
                problems.append(Problem(line, "expected", f"{value!r} is not a number"))
    elif grader is Grader.CHOICE:
        letter = str(expected).strip().strip("()").upper()
        n_choices = len(raw["choices"]) if isinstance(raw.get("choices"), list) else 26
        if isinstance(expected, list) or len(letter) != 1 or not "A" <= letter <= "Z":
            problems.append(Problem(line, "expected", f"{expected!r} is not an option letter (A, B, …)"))
        elif ord(letter) - ord("A") >= n_choices:
            problems.append(Problem(line, "expected", f"{letter} is beyond the {n_choices} choices"))
    else:
        for value in alternatives:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                problems.append(Problem(line, "expected", f"{value!r} must be a string"))
    return problems


def _parse_case(raw: Any, line: int) -> tuple[Case | None, list[Problem]]:
    if not isinstance(raw, dict):
        return None, [Problem(line, "", "each line must be a JSON object")]
    problems = [Problem(line, k, "unknown field") for k in raw if k not in _KNOWN_FIELDS]

    case_id = raw.get("id")
    if isinstance(case_id, int) and not isinstance(case_id, bool):
        case_id = str(case_id)
    if not isinstance(case_id, str) or not case_id.strip():
        problems.append(Problem(line, "id", "missing or not a non-empty string"))
        case_id = ""

    grader_name = raw.get("grader", Grader.EXACT.value)
    try:
        grader = Grader(grader_name)
    except ValueError:
        known = ", ".join(g.value for g in Grader)
        problems.append(Problem(line, "grader", f"unknown grader {grader_name!r} (known: {known})"))
        grader = Grader.EXACT

    prompt = raw.get("prompt")
    messages_raw = raw.get("messages")
    messages: tuple[Mapping[str, str], ...] | None = None
    if (prompt is None) == (messages_raw is None):
        problems.append(Problem(line, "prompt", "give exactly one of 'prompt' and 'messages'"))
    elif prompt is not None and not isinstance(prompt, str):
        problems.append(Problem(line, "prompt", "must be a string"))
    elif messages_raw is not None:
        if not isinstance(messages_raw, list) or not messages_raw:
            problems.append(Problem(line, "messages", "must be a non-empty list of {role, content}"))
        else:
            checked: list[Mapping[str, str]] = []
            for i, m in enumerate(messages_raw):
                if (not isinstance(m, dict) or m.get("role") not in _ROLES
                        or not isinstance(m.get("content"), str)):
                    problems.append(Problem(line, f"messages[{i}]",
                                            "must be {role: system|user|assistant|…, content: str}"))
                else:
                    checked.append({"role": m["role"], "content": m["content"]})
            messages = tuple(checked)

    problems += _check_expected(grader, raw, line)

    patterns: list[re.Pattern[str]] = []
    if grader is Grader.REGEX and "expected" in raw:
        for value in raw["expected"] if isinstance(raw["expected"], list) else [raw["expected"]]:
            try:
                patterns.append(re.compile(str(value)))
            except re.error as exc:
                problems.append(Problem(line, "expected", f"invalid regex {value!r}: {exc}"))

    tolerance = raw.get("tolerance")
    if tolerance is not None and (not _is_number(tolerance) or tolerance < 0):
        problems.append(Problem(line, "tolerance", "must be a number ≥ 0"))
    if tolerance is not None and grader is not Grader.NUMERIC:
        problems.append(Problem(line, "tolerance", "only the numeric grader uses it"))

    schema = raw.get("schema")
    if schema is not None:
        if grader is not Grader.JSON_SCHEMA:
            problems.append(Problem(line, "schema", "only the json_schema grader uses it"))
        problems += [Problem(line, "schema", p) for p in check_schema(schema)]

    choices_raw = raw.get("choices")
    choices: tuple[str, ...] | None = None
    if choices_raw is not None:
        if (not isinstance(choices_raw, list) or not 2 <= len(choices_raw) <= 26
                or not all(isinstance(c, str) for c in choices_raw)):
            problems.append(Problem(line, "choices", "must be a list of 2 to 26 strings"))
        else:
            choices = tuple(choices_raw)

    max_tokens = raw.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                   or max_tokens < 1):
        problems.append(Problem(line, "max_tokens", "must be an integer ≥ 1"))
    temperature = raw.get("temperature")
    if temperature is not None and (not _is_number(temperature) or not 0 <= temperature <= 2):
        problems.append(Problem(line, "temperature", "must be a number in [0, 2]"))

    if problems:
        return None, problems
    return Case(
        id=case_id,
        expected=raw.get("expected"),
        grader=grader,
        prompt=prompt,
        messages=messages,
        tolerance=float(tolerance) if tolerance is not None else None,
        schema=schema,
        choices=choices,
        max_tokens=max_tokens,
        temperature=float(temperature) if temperature is not None else None,
        line=line,
        patterns=tuple(patterns),
    ), []


def parse_suite(text: str, *, source: str = "suite.jsonl") -> Suite:
    """Parse a JSONL suite; raise ``SuiteError`` listing every problem (line and field)."""
    problems: list[Problem] = []
    cases: list[Case] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            raw = json.loads(stripped)
        except ValueError as exc:
            problems.append(Problem(number, "", f"bad JSON: {exc}"))
            continue
        case, case_problems = _parse_case(raw, number)
        problems += case_problems
        if case is None:
            continue
        if case.id in first_line:
            first = first_line[case.id]
            problems.append(Problem(number, "id", f"duplicate id {case.id!r} (first on line {first})"))
            continue
        first_line[case.id] = number
        cases.append(case)
    if not problems and not cases:
        problems.append(Problem(0, "", "the suite has no cases"))
    if problems:
        raise SuiteError(source, problems)
    return Suite(cases=tuple(cases), source=source)
