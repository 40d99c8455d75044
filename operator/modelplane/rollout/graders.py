"""Graders: pure functions that decide whether one answer is right for one case of a suite.

Each grader is ``(answer, case) -> bool`` and never raises on a bad answer (a model that returns
garbage is simply wrong). Answers are normalised before comparison so that formatting noise — the
surrounding whitespace, letter case, a trailing period, a code fence around JSON — does not decide a
rollout. The ``judge`` grader needs another model and is therefore async and lives in
``modelplane.rollout.evaluate``; it is listed here so the suite parser knows the name.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelplane.rollout.suite import Case


class Grader(StrEnum):
    EXACT = "exact"
    CONTAINS = "contains"
    REGEX = "regex"
    JSON_SCHEMA = "json_schema"
    NUMERIC = "numeric"
    CHOICE = "choice"
    JUDGE = "judge"


_SPACES = re.compile(r"\s+")
#: The first number in a text: optional sign, digits with optional thousands separators, decimals,
#: exponent. Thousands separators are only taken when they group exactly three digits.
_NUMBER = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?"
    r"|[-+]?\.\d+(?:[eE][-+]?\d+)?"
)
_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)
#: "B", "B)", "(B)", "B.", "B:" at the start of the answer, followed by nothing or a separator.
_LEADING_CHOICE = re.compile(r"^\(?([A-Za-z])\s*[).:]?(?:\s|$)")
#: "Answer: B", "The answer is (B)", "answer - b".
_ANSWER_CHOICE = re.compile(r"answer\s*(?:is)?\s*[:\-]?\s*\(?([A-Za-z])\b\)?", re.IGNORECASE)


def normalize(text: str) -> str:
    """Strip, fold case, collapse inner whitespace and drop trailing periods."""
    folded = _SPACES.sub(" ", text.strip()).casefold()
    return folded.rstrip(".").rstrip()


def first_number(text: str) -> float | None:
    """The first number written in ``text`` (``"about 1,234.5 tokens"`` → 1234.5), or None."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    try:
        return float(match.group(0).replace(",", ""))
    except ValueError:
        return None


def choice_letter(answer: str, *, letters: str) -> str | None:
    """The option letter an answer picks, upper-cased, if it is one of ``letters``."""
    stripped = answer.strip()
    for pattern in (_LEADING_CHOICE, _ANSWER_CHOICE):
        match = pattern.search(stripped)
        if match is not None and match.group(1).upper() in letters:
            return match.group(1).upper()
    return None


def extract_json(answer: str) -> tuple[bool, Any]:
    """Parse the answer as JSON, tolerating a Markdown code fence; (ok, value)."""
    text = answer.strip()
    fenced = _FENCE.match(text)
    if fenced is not None:
        text = fenced.group(1).strip()
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


def _expected_texts(case: Case) -> Sequence[str]:
    expected = case.expected
    if isinstance(expected, list):
        return [str(e) for e in expected]
    return [str(expected)]


def grade_exact(answer: str, case: Case) -> bool:
    got = normalize(answer)
    return any(got == normalize(e) for e in _expected_texts(case))


def grade_contains(answer: str, case: Case) -> bool:
    got = normalize(answer)
    return any(normalize(e) in got for e in _expected_texts(case))


def grade_regex(answer: str, case: Case) -> bool:
    # Patterns were compiled (and so validated) when the suite was parsed.
    return any(p.search(answer.strip()) is not None for p in case.patterns)


def grade_numeric(answer: str, case: Case) -> bool:
    got = first_number(answer)
    if got is None or not math.isfinite(got):
        return False
    tolerance = case.tolerance if case.tolerance is not None else 0.0
    expected = case.expected if isinstance(case.expected, list) else [case.expected]
    for value in expected:
        want = value if isinstance(value, int | float) else first_number(str(value))
        # A relative epsilon so that 0.1 + 0.2 style float noise in expected values never decides.
        if want is not None and abs(got - float(want)) <= tolerance + 1e-9 * max(1.0, abs(float(want))):
            return True
    return False


def grade_choice(answer: str, case: Case) -> bool:
    n_choices = len(case.choices) if case.choices else 10
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n_choices]
    want = str(case.expected).strip().strip("()").upper()
    picked = choice_letter(answer, letters=letters)
    if picked is not None:
        return picked == want
    # A model that answers with the option's text instead of its letter is right too.
    if case.choices and want in letters:
        return normalize(answer) == normalize(case.choices[letters.index(want)])
    return False


def grade_json_schema(answer: str, case: Case) -> bool:
    ok, value = extract_json(answer)
    if not ok:
        return False
    if case.schema is not None and validate_schema(value, case.schema):
        return False
    if case.expected is not None:
        return bool(value == case.expected)
    return True


GRADE: Mapping[Grader, Callable[[str, Case], bool]] = {
    Grader.EXACT: grade_exact,
    Grader.CONTAINS: grade_contains,
    Grader.REGEX: grade_regex,
    Grader.NUMERIC: grade_numeric,
    Grader.CHOICE: grade_choice,
    Grader.JSON_SCHEMA: grade_json_schema,
}


def grade(answer: str, case: Case) -> bool:
    """Grade with the case's own grader; the judge grader cannot be graded here (it needs a model)."""
    if case.grader is Grader.JUDGE:
        raise ValueError(f"case {case.id!r} needs a judge; use modelplane.rollout.evaluate")
    return GRADE[case.grader](answer, case)


# --- a small JSON Schema validator -------------------------------------------------------------
# A subset of draft 2020-12, enough for "the answer is an object with these typed fields". It avoids
# a dependency chain (jsonschema pulls in attrs, referencing, rpds-py) for a few dozen lines, and the
# suite parser refuses keywords outside the subset, so nothing is silently ignored.

SUPPORTED_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
    "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
    "maxLength", "pattern", "anyOf", "allOf", "oneOf", "not",
    # Annotations: allowed, no effect on validity.
    "$schema", "title", "description", "default", "examples",
})
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


def _is_type(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return isinstance(value, int | float)  # number


def check_schema(schema: Any, path: str = "schema") -> list[str]:
    """Problems that make ``schema`` unusable by ``validate_schema`` (unknown keyword, bad type)."""
    if isinstance(schema, bool):
        return []
    if not isinstance(schema, dict):
        return [f"{path}: a schema must be an object or a boolean"]
    problems = [f"{path}: unsupported keyword {k!r}" for k in schema if k not in SUPPORTED_KEYWORDS]
    types = schema.get("type")
    for t in types if isinstance(types, list) else [types] if types is not None else []:
        if t not in _TYPES:
            problems.append(f"{path}.type: unknown type {t!r}")
    if "pattern" in schema:
        try:
            re.compile(str(schema["pattern"]))
        except re.error as exc:
            problems.append(f"{path}.pattern: invalid regex ({exc})")
    for key, sub in (schema.get("properties") or {}).items():
        problems += check_schema(sub, f"{path}.properties.{key}")
    for key in ("items", "additionalProperties", "not"):
        if key in schema and not isinstance(schema[key], bool):
            problems += check_schema(schema[key], f"{path}.{key}")
    for key in ("anyOf", "allOf", "oneOf"):
        for i, sub in enumerate(schema.get(key) or []):
            problems += check_schema(sub, f"{path}.{key}[{i}]")
    return problems


def validate_schema(value: Any, schema: Any, path: str = "$") -> list[str]:
    """Reasons ``value`` does not satisfy ``schema``; empty when it does."""
    if schema is True:
        return []
    if schema is False:
        return [f"{path}: no value is allowed here"]
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_is_type(value, t) for t in names):
            return [f"{path}: expected {'/'.join(names)}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: must equal {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: must be one of {schema['enum']!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: below minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: above maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{path}: not above {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errors.append(f"{path}: not below {schema['exclusiveMaximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            errors.append(f"{path}: does not match {schema['pattern']!r}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += validate_schema(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key in schema.get("required") or []:
            if key not in value:
                errors.append(f"{path}: missing required property {key!r}")
        for key, item in value.items():
            if key in properties:
                errors += validate_schema(item, properties[key], f"{path}.{key}")
            elif "additionalProperties" in schema:
                errors += validate_schema(item, schema["additionalProperties"], f"{path}.{key}")
    for sub in schema.get("allOf") or []:
        errors += validate_schema(value, sub, path)
    if "anyOf" in schema and not any(not validate_schema(value, s, path) for s in schema["anyOf"]):
        errors.append(f"{path}: matches none of anyOf")
    if "oneOf" in schema and sum(1 for s in schema["oneOf"] if not validate_schema(value, s, path)) != 1:
        errors.append(f"{path}: does not match exactly one of oneOf")
    if "not" in schema and not validate_schema(value, schema["not"], path):
        errors.append(f"{path}: matches a schema it must not")
    return errors
