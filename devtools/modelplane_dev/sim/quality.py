"""The checkpoint quality model: what a simulated replica answers, and how well.

A canary gate can only tell a good fine-tune from a bad one if the simulator's answers depend on the
checkpoint it serves. So the simulator really solves a family of evaluation tasks (integer
arithmetic, comparisons, repeating a word, JSON with given keys, dates, divisions, multiple choice)
and answers each correctly with probability ``accuracy`` of its checkpoint; the draw is a hash of
(seed, checkpoint, prompt), so the same checkpoint gives the same answer to the same prompt every
time, and a wrong answer is a plausible one (off by a little, the other number, one repetition too
many, a missing key). Prompts it does not recognise get a deterministic filler text.

Behaviour knobs per checkpoint (``SimBehavior``): ``accuracy``, ``error_rate`` (share of requests
answered with HTTP 500), ``latency_factor`` (slows the engine), ``load_seconds`` (how long
``/health`` says 503). They come from a mapping checkpoint -> behaviour (``BehaviorMap``), written
as YAML or JSON, in a file (``MODELPLANE_SIM_BEHAVIOR_FILE`` or ``--behavior-file``) or inline in
``MODELPLANE_SIM_BEHAVIORS``::

    "*": {accuracy: 0.9}                 # every other checkpoint
    good-ft: {accuracy: 0.92}            # by revision
    bad-ft: {accuracy: 0.6, error_rate: 0.05, latency_factor: 2.0}
    org/model@rev3: {load_seconds: 30}   # by model and revision (most specific wins)

Asked to grade (the evaluation gate's judge prompt: a reference answer and a candidate answer),
the simulator acts as a judge model: it says YES when the candidate matches the reference
(equal, or containing it, ignoring case and surrounding space) and NO otherwise, right with
probability ``accuracy`` like any other task.

``generate_suite`` writes evaluation suites of these tasks in the JSONL case format the evaluation
gate reads: ``{"id", "prompt" | "messages", "expected", "grader", "tolerance"?, "schema"?}``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

#: Characters per token of the simulator's tokenizer (a common rule of thumb for English BPE).
CHARS_PER_TOKEN = 4

ENV_BEHAVIORS = "MODELPLANE_SIM_BEHAVIORS"
ENV_BEHAVIOR_FILE = "MODELPLANE_SIM_BEHAVIOR_FILE"

_FILLER_WORDS = (
    "the", "and", "for", "sim", "net", "gpu", "one", "two", "art", "key", "map", "row", "set", "log",
    "run", "way", "day", "sky", "sea", "owl", "fox", "ink", "oak", "elm", "ice", "sun", "air", "arc",
)


def count_tokens(text: str) -> int:
    """Tokens of ``text`` by the simulator's tokenizer: about four characters a token, at least one."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def split_tokens(text: str) -> list[str]:
    """``text`` cut into the pieces the simulator streams, one per token (``count_tokens`` of them)."""
    if not text:
        return [""]
    return [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]


def render_chat(messages: Iterable[Mapping[str, Any]]) -> str:
    """The prompt text of a chat, as a simple chat template would lay it out (for token counting)."""
    parts = []
    for message in messages:
        parts.append(f"<|{message.get('role', 'user')}|>\n{content_text(message.get('content'))}\n")
    parts.append("<|assistant|>\n")
    return "".join(parts)


def content_text(content: Any) -> str:
    """The text of a chat message's ``content``: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def last_user_text(messages: Iterable[Mapping[str, Any]]) -> str:
    text = ""
    for message in messages:
        if message.get("role") == "user":
            text = content_text(message.get("content"))
    return text


# ---- behaviour ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimBehavior:
    """How one checkpoint behaves in the simulator."""

    accuracy: float = 0.9  #: probability that an evaluation prompt is answered correctly
    error_rate: float = 0.0  #: share of requests answered with HTTP 500
    latency_factor: float = 1.0  #: multiplies every engine step time (1 = the GPU's normal pace)
    load_seconds: float = 0.0  #: time from start until ``/health`` answers 200
    lora_rank: int = 8  #: of a LoRA adapter (``sim/lora.py``): its rank, checked against --max-lora-rank
    lora_missing: bool = False  #: of a LoRA adapter: nothing at its path (load answers 404)

    def __post_init__(self) -> None:
        if not 0 <= self.accuracy <= 1:
            raise ValueError(f"accuracy must be in [0, 1], got {self.accuracy}")
        if not 0 <= self.error_rate <= 1:
            raise ValueError(f"error_rate must be in [0, 1], got {self.error_rate}")
        if self.latency_factor <= 0:
            raise ValueError(f"latency_factor must be > 0, got {self.latency_factor}")
        if self.load_seconds < 0:
            raise ValueError(f"load_seconds must be >= 0, got {self.load_seconds}")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> SimBehavior:
        known = {"accuracy", "error_rate", "latency_factor", "load_seconds", "lora_rank", "lora_missing"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown behaviour fields {unknown}; known: {sorted(known)}")
        kinds: dict[str, Callable[[Any], Any]] = {"lora_rank": int, "lora_missing": bool}
        return cls(**{k: kinds.get(k, float)(v) for k, v in raw.items()})


DEFAULT_BEHAVIOR = SimBehavior()


@dataclass(frozen=True)
class BehaviorMap:
    """Behaviour by checkpoint; ``for_checkpoint`` picks the most specific entry."""

    default: SimBehavior = DEFAULT_BEHAVIOR
    by_key: Mapping[str, SimBehavior] = field(default_factory=dict)

    def for_checkpoint(self, model: str, revision: str | None) -> SimBehavior:
        keys = [f"{model}@{revision}", revision, model] if revision else [model]
        for key in keys:
            if key is not None and key in self.by_key:
                return self.by_key[key]
        return self.default

    def for_adapter(self, path: str, name: str) -> SimBehavior:
        """A LoRA adapter's behaviour: the entry of its path, else of its name, else the default."""
        for key in (path, name):
            if key in self.by_key:
                return self.by_key[key]
        return self.default


def parse_behaviors(text: str) -> BehaviorMap:
    """A ``BehaviorMap`` from YAML or JSON text (see the module docstring for the format)."""
    raw = yaml.safe_load(text) if text.strip() else {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError("behaviours must be a mapping of checkpoint -> {accuracy, error_rate, ...}")
    default = DEFAULT_BEHAVIOR
    by_key: dict[str, SimBehavior] = {}
    for key, value in raw.items():
        if not isinstance(value, dict):
            raise ValueError(f"behaviour of {key!r} must be a mapping, got {type(value).__name__}")
        behavior = SimBehavior.from_mapping(value)
        if key in ("*", "default"):
            default = behavior
        else:
            by_key[str(key)] = behavior
    return BehaviorMap(default=default, by_key=by_key)


def read_behaviors(*, path: str | os.PathLike[str] | None = None,
                   env: Mapping[str, str] | None = None) -> BehaviorMap:
    """Behaviours from ``path``, else ``$MODELPLANE_SIM_BEHAVIOR_FILE``, else ``$MODELPLANE_SIM_BEHAVIORS``.

    With none of them, every checkpoint gets the default behaviour.
    """
    env = os.environ if env is None else env
    file = path or env.get(ENV_BEHAVIOR_FILE)
    if file:
        return parse_behaviors(Path(file).read_text(encoding="utf-8"))
    inline = env.get(ENV_BEHAVIORS)
    if inline:
        return parse_behaviors(inline)
    return BehaviorMap()


# ---- deterministic draws ------------------------------------------------------------------------------


def unit_draw(*parts: object) -> float:
    """A uniform number in [0, 1) fixed by ``parts`` (same inputs, same number, on any machine)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _rng(*parts: object) -> random.Random:
    return random.Random(int(unit_draw(*parts) * 2**53))


# ---- tasks the simulator can solve ----------------------------------------------------------------------


class TaskKind(StrEnum):
    ARITHMETIC = "arithmetic"
    COMPARISON = "comparison"
    REPEAT = "repeat"
    JSON = "json"
    CHOICE = "choice"
    CONTAINS = "contains"
    DATE = "date"
    DIVISION = "division"


@dataclass(frozen=True)
class Solution:
    """What the simulator can say to an evaluation prompt: the right answer and a plausible wrong one."""

    kind: TaskKind
    correct: str
    wrong: str


_OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
}
_LETTERS = "ABCDEFGH"

_RE_CHOICE = re.compile(
    r"What is (-?\d+) ([+*-]) (-?\d+)\?\s*Options:\s*(.*?)\s*Answer with the letter only", re.S)
_RE_ARITH = re.compile(r"What is (-?\d+) ([+*-]) (-?\d+)\? Answer with a number only")
_RE_COMPARE = re.compile(r"Which is larger: (-?\d+) or (-?\d+)\? Answer with the number only")
_RE_REPEAT = re.compile(r"Repeat the word '([^']+)' exactly (\d+) times, separated by single spaces")
_RE_JSON = re.compile(
    r"Return a JSON object with exactly these keys and values: (.*?)\. Output only the JSON", re.S)
_RE_JSON_PAIR = re.compile(r'"([^"]+)" = ("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|true|false)')
_RE_CONTAINS = re.compile(r"In one sentence, state the product of (-?\d+) and (-?\d+)\.")
_RE_DATE = re.compile(r"Write the date (\d{4})-(\d{2})-(\d{2}) in the format DD/MM/YYYY")
_RE_DIVISION = re.compile(r"What is (-?\d+) divided by (-?\d+)\? Give the result to two decimal places")


#: The gate's judge prompt (``modelplane.rollout.evaluate``): a reference and a candidate answer.
_RE_JUDGE = re.compile(r"Reference answer:\n(.*?)\n\nCandidate answer:\n(.*?)\n\nIs the candidate answer "
                       r"correct and consistent with the reference\?", re.S)


def judge_verdict(prompt: str) -> bool | None:
    """For a judge prompt, whether the candidate matches the reference; None for other prompts."""
    m = _RE_JUDGE.search(prompt)
    if m is None:
        return None
    reference, candidate = m.group(1).strip().casefold(), m.group(2).strip().casefold()
    return bool(reference) and (candidate == reference or reference in candidate)


def _wrong_number(value: int, rng: random.Random) -> int:
    delta = rng.choice((1, 2, 3, 10, -1, -2, -10))
    if rng.random() < 0.3 and abs(value) >= 10:
        digits = list(str(abs(value)))
        i = rng.randrange(len(digits) - 1)
        digits[i], digits[i + 1] = digits[i + 1], digits[i]
        swapped = int("".join(digits)) * (-1 if value < 0 else 1)
        if swapped != value:
            return swapped
    return value + delta


def solve(prompt: str, *, rng: random.Random) -> Solution | None:
    """The simulator's answer to an evaluation prompt it recognises; None for any other prompt.

    ``rng`` chooses the wrong answer, so callers seed it for determinism.
    """
    m = _RE_CHOICE.search(prompt)
    if m:
        value = _OPS[m.group(2)](int(m.group(1)), int(m.group(3)))
        options = dict(re.findall(r"([A-H])\)\s*(-?\d+)", m.group(4)))
        right = [k for k, v in options.items() if int(v) == value]
        if right:
            others = [k for k in options if k not in right] or [k for k in _LETTERS if k not in right]
            return Solution(TaskKind.CHOICE, right[0], rng.choice(others))
    m = _RE_ARITH.search(prompt)
    if m:
        value = _OPS[m.group(2)](int(m.group(1)), int(m.group(3)))
        return Solution(TaskKind.ARITHMETIC, str(value), str(_wrong_number(value, rng)))
    m = _RE_COMPARE.search(prompt)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        return Solution(TaskKind.COMPARISON, str(max(a, b)), str(min(a, b)))
    m = _RE_REPEAT.search(prompt)
    if m:
        word, times = m.group(1), int(m.group(2))
        wrong_times = times + rng.choice((1, -1)) if times > 1 else 2
        return Solution(TaskKind.REPEAT, " ".join([word] * times), " ".join([word] * wrong_times))
    m = _RE_JSON.search(prompt)
    if m:
        pairs = [(k, json.loads(v)) for k, v in _RE_JSON_PAIR.findall(m.group(1))]
        if pairs:
            obj = dict(pairs)
            wrong = dict(pairs)
            victim = rng.choice([k for k, _ in pairs])
            if len(pairs) > 1 and rng.random() < 0.5:
                del wrong[victim]
            else:
                value = wrong[victim]
                wrong[victim] = value + 1 if isinstance(value, int | float) and not isinstance(value, bool) \
                    else f"{value}x"
            return Solution(TaskKind.JSON, json.dumps(obj), json.dumps(wrong))
    m = _RE_CONTAINS.search(prompt)
    if m:
        value = int(m.group(1)) * int(m.group(2))
        return Solution(TaskKind.CONTAINS, f"The product is {value}.",
                        f"The product is {_wrong_number(value, rng)}.")
    m = _RE_DATE.search(prompt)
    if m:
        year, month, day = m.groups()
        # The classic mistake: month and day swapped (US order).
        return Solution(TaskKind.DATE, f"{day}/{month}/{year}", f"{month}/{day}/{year}")
    m = _RE_DIVISION.search(prompt)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if b != 0:
            quotient = a / b
            return Solution(TaskKind.DIVISION, f"{quotient:.2f}",
                            f"{quotient * rng.choice((1.1, 0.9, 1.25)):.2f}")
    return None


def filler_text(seed_text: str, tokens: int) -> str:
    """A deterministic text of exactly ``tokens`` tokens (each word plus its space is four characters)."""
    rng = _rng("filler", seed_text)
    words = [rng.choice(_FILLER_WORDS) for _ in range(max(tokens, 1))]
    return " ".join(words)[: max(tokens, 1) * CHARS_PER_TOKEN - 1] + "."


@dataclass(frozen=True)
class Answer:
    text: str
    evaluated: bool  #: the prompt was an evaluation task the simulator recognised
    correct: bool  #: for evaluated prompts, whether the draw said "right"


def answer(prompt: str, *, checkpoint: str, behavior: SimBehavior, seed: int = 0,
           default_tokens: int = 64) -> Answer:
    """What a checkpoint answers to ``prompt``: deterministic for (seed, checkpoint, prompt).

    Unrecognised prompts get ``default_tokens`` of filler text.
    """
    verdict = judge_verdict(prompt)
    if verdict is not None:
        right = unit_draw("accuracy", seed, checkpoint, prompt) < behavior.accuracy
        return Answer("YES" if verdict == right else "NO", True, right)
    solution = solve(prompt, rng=_rng("wrong", seed, checkpoint, prompt))
    if solution is None:
        return Answer(filler_text(f"{seed}\x1f{checkpoint}\x1f{prompt}", default_tokens), False, False)
    correct = unit_draw("accuracy", seed, checkpoint, prompt) < behavior.accuracy
    return Answer(solution.correct if correct else solution.wrong, True, correct)


# ---- evaluation suites ----------------------------------------------------------------------------------


def _case_arithmetic(rng: random.Random) -> dict[str, Any]:
    op = rng.choice(("+", "-", "*"))
    if op == "*":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
    else:
        a, b = rng.randint(10, 999), rng.randint(10, 999)
    return {"prompt": f"What is {a} {op} {b}? Answer with a number only.",
            "expected": str(_OPS[op](a, b)), "grader": "exact"}


def _case_comparison(rng: random.Random) -> dict[str, Any]:
    a, b = rng.sample(range(10, 1000), 2)
    return {"prompt": f"Which is larger: {a} or {b}? Answer with the number only.",
            "expected": str(max(a, b)), "grader": "exact"}


def _case_repeat(rng: random.Random) -> dict[str, Any]:
    word = rng.choice(("falcon", "harbor", "violet", "quartz", "meadow", "lantern", "cobalt", "thistle"))
    times = rng.randint(2, 6)
    return {"messages": [
        {"role": "system", "content": "You follow formatting instructions exactly."},
        {"role": "user", "content": f"Repeat the word '{word}' exactly {times} times, separated by single "
                                    "spaces. Output nothing else."}],
        "expected": " ".join([word] * times), "grader": "exact"}


def _case_json(rng: random.Random) -> dict[str, Any]:
    name = rng.choice(("Ada", "Grace", "Linus", "Barbara", "Edsger", "Frances"))
    city = rng.choice(("Oslo", "Lima", "Kyoto", "Nairobi", "Quebec", "Perth"))
    age = rng.randint(20, 90)
    prompt = (f'Return a JSON object with exactly these keys and values: "name" = "{name}", "age" = {age}, '
              f'"city" = "{city}". Output only the JSON.')
    schema = {"type": "object", "required": ["name", "age", "city"],
              "properties": {"name": {"const": name}, "age": {"const": age}, "city": {"const": city}}}
    return {"prompt": prompt, "expected": {"name": name, "age": age, "city": city},
            "grader": "json_schema", "schema": schema}


def _case_choice(rng: random.Random) -> dict[str, Any]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    value = a + b
    options = {value}
    while len(options) < 4:
        options.add(value + rng.choice((-11, -10, -2, -1, 1, 2, 9, 10, 11)))
    ordered = sorted(options)
    rng.shuffle(ordered)
    letters = _LETTERS[: len(ordered)]
    listing = " ".join(f"{letter}) {v}" for letter, v in zip(letters, ordered, strict=True))
    return {"prompt": f"What is {a} + {b}? Options: {listing}. Answer with the letter only.",
            "expected": letters[ordered.index(value)], "grader": "choice"}


def _case_contains(rng: random.Random) -> dict[str, Any]:
    a, b = rng.randint(11, 99), rng.randint(11, 99)
    return {"prompt": f"In one sentence, state the product of {a} and {b}.",
            "expected": str(a * b), "grader": "contains"}


def _case_date(rng: random.Random) -> dict[str, Any]:
    year, month, day = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(13, 28)
    return {"prompt": f"Write the date {year}-{month:02d}-{day:02d} in the format DD/MM/YYYY. "
                      "Answer with the date only.",
            "expected": rf"^\s*{day:02d}/{month:02d}/{year}\s*$", "grader": "regex"}


def _case_division(rng: random.Random) -> dict[str, Any]:
    a, b = rng.randint(100, 9999), rng.randint(3, 97)
    return {"prompt": f"What is {a} divided by {b}? Give the result to two decimal places.",
            "expected": round(a / b, 2), "grader": "numeric", "tolerance": 0.01}


_CASE_BUILDERS: dict[TaskKind, Callable[[random.Random], dict[str, Any]]] = {
    TaskKind.ARITHMETIC: _case_arithmetic,
    TaskKind.COMPARISON: _case_comparison,
    TaskKind.REPEAT: _case_repeat,
    TaskKind.JSON: _case_json,
    TaskKind.CHOICE: _case_choice,
    TaskKind.CONTAINS: _case_contains,
    TaskKind.DATE: _case_date,
    TaskKind.DIVISION: _case_division,
}


def generate_suite(n: int, *, seed: int = 0, kinds: Iterable[TaskKind] | None = None) -> list[dict[str, Any]]:
    """``n`` evaluation cases, cycling through ``kinds`` (all by default), reproducible for ``seed``."""
    chosen = list(kinds) if kinds is not None else list(TaskKind)
    if not chosen:
        raise ValueError("kinds must not be empty")
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        kind = chosen[i % len(chosen)]
        case = {"id": f"{kind.value}-{i:04d}", **_CASE_BUILDERS[kind](rng)}
        cases.append(case)
    return cases


def suite_jsonl(cases: Iterable[Mapping[str, Any]]) -> str:
    """Cases as JSONL, one JSON object a line."""
    return "".join(json.dumps(dict(case), sort_keys=False) + "\n" for case in cases)


def case_prompt(case: Mapping[str, Any]) -> str:
    """The text the simulator sees for a case (its prompt, or its last user message)."""
    if "prompt" in case:
        return str(case["prompt"])
    return last_user_text(case.get("messages", []))
