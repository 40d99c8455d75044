"""The evaluation runner: send every case of a suite to the canary and to stable, grade, pair.

Both revisions get the same cases with the same sampling parameters (temperature 0 by default, so
the comparison measures the checkpoints, not the dice). Requests go out with bounded concurrency
per endpoint (so both see the same load), a per-request timeout, and bounded retries with backoff
for what can recover (connection errors, timeouts, 429, 5xx). A request that still fails (or whose
judge fails) is reported with its error and marks its case as an error for that revision, not as a
wrong answer: the gate leaves such cases out of the comparison, and too many of them leave the
evaluation without a verdict (``stats.evaluate_gate``), so neither revision wins by the other's
errors. The caller feeds ``EvaluationRun.outcomes`` to ``stats.evaluate_gate``.

Cases with the ``judge`` grader need a ``Judge``: an async callable that asks another model (another
ModelDeployment's endpoint) whether an answer is right; ``OpenAIJudge`` is one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp

from modelplane.rollout.graders import Grader, grade
from modelplane.rollout.stats import PairedOutcome
from modelplane.rollout.suite import Case, Suite

#: Asks a judge whether ``answer`` is right for ``case``; raises on transport errors.
Judge = Callable[[Case, str], Awaitable[bool]]

_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class Api(StrEnum):
    CHAT = "chat"  #: /v1/chat/completions (a bare prompt becomes one user message)
    COMPLETIONS = "completions"  #: /v1/completions (base models without a chat template)


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server: ``http://host:8000`` or ``…/v1``, and the model name it serves."""

    base_url: str
    model: str

    def url(self, path: str) -> str:
        base = self.base_url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        return f"{base}/{path}"


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None  #: vLLM honours a per-request seed; set it when temperature > 0


@dataclass(frozen=True)
class Answer:
    """One revision's answer to one case."""

    case_id: str
    text: str | None  #: None when the request failed
    correct: bool
    error: str | None  #: why the request or the judge failed, if it did
    attempts: int
    seconds: float


@dataclass(frozen=True)
class EvaluationRun:
    outcomes: tuple[PairedOutcome, ...]  #: in suite order
    canary: tuple[Answer, ...]
    stable: tuple[Answer, ...]

    @property
    def canary_errors(self) -> int:
        return sum(1 for a in self.canary if a.error is not None)

    @property
    def stable_errors(self) -> int:
        return sum(1 for a in self.stable if a.error is not None)


class RequestFailed(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def build_request(case: Case, endpoint: Endpoint, params: SamplingParams,
                  api: Api) -> tuple[str, dict[str, Any]]:
    """The URL and JSON body for one case; the case's own max_tokens/temperature win."""
    body: dict[str, Any] = {
        "model": endpoint.model,
        "max_tokens": case.max_tokens if case.max_tokens is not None else params.max_tokens,
        "temperature": case.temperature if case.temperature is not None else params.temperature,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if api is Api.COMPLETIONS and case.messages is None:
        body["prompt"] = case.prompt or ""
        return endpoint.url("completions"), body
    body["messages"] = case.chat_messages()
    return endpoint.url("chat/completions"), body


def answer_text(payload: Any) -> str:
    """The text of the first choice of a chat or completions response."""
    try:
        choice = payload["choices"][0]
        if "message" in choice:
            return str(choice["message"].get("content") or "")
        return str(choice.get("text") or "")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise RequestFailed(f"unexpected response shape: {exc!r}", retryable=False) from exc


async def _post_once(session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout: float) -> str:
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                detail = (await resp.text())[:200]
                retryable = resp.status in _RETRYABLE_STATUS
                raise RequestFailed(f"HTTP {resp.status}: {detail}", retryable=retryable)
            return answer_text(await resp.json(content_type=None))
    except TimeoutError as exc:
        raise RequestFailed(f"no answer within {timeout:g}s", retryable=True) from exc
    except aiohttp.ClientError as exc:
        raise RequestFailed(f"{type(exc).__name__}: {exc}", retryable=True) from exc
    except ValueError as exc:  # a body that is not JSON
        raise RequestFailed(f"response is not JSON: {exc}", retryable=False) from exc


async def _ask(
    *,
    session: aiohttp.ClientSession,
    case: Case,
    endpoint: Endpoint,
    params: SamplingParams,
    api: Api,
    semaphore: asyncio.Semaphore,
    timeout: float,
    retries: int,
    backoff: float,
    judge: Judge | None,
) -> Answer:
    url, body = build_request(case, endpoint, params, api)
    started = time.monotonic()
    attempts = 0
    error: str | None = None
    text: str | None = None
    async with semaphore:
        while True:
            attempts += 1
            try:
                text = await _post_once(session, url, body, timeout)
                error = None
                break
            except RequestFailed as exc:
                error = str(exc)
                if not exc.retryable or attempts > retries:
                    break
            await asyncio.sleep(backoff * 2 ** (attempts - 1))
    correct = False
    if text is not None:
        try:
            if case.grader is Grader.JUDGE:
                if judge is None:
                    raise RuntimeError("the suite has judge cases but no judge is configured")
                correct = await judge(case, text)
            else:
                correct = grade(text, case)
        except Exception as exc:  # a judge that fails makes the case wrong, reported, never a crash
            error = f"grading failed: {type(exc).__name__}: {exc}"
            correct = False
    return Answer(case_id=case.id, text=text, correct=correct, error=error, attempts=attempts,
                  seconds=time.monotonic() - started)


async def run_evaluation(
    *,
    suite: Suite,
    canary: Endpoint,
    stable: Endpoint,
    params: SamplingParams | None = None,
    concurrency: int = 4,
    timeout_seconds: float = 60.0,
    retries: int = 2,
    backoff_seconds: float = 0.5,
    api: Api = Api.CHAT,
    judge: Judge | None = None,
    session: aiohttp.ClientSession | None = None,
) -> EvaluationRun:
    """Ask both endpoints every case; at most ``concurrency`` requests in flight per endpoint."""
    if concurrency < 1:
        raise ValueError("concurrency must be ≥ 1")
    params = params or SamplingParams()
    own_session = session is None
    session = session or aiohttp.ClientSession()
    try:
        requests: list[Coroutine[Any, Any, Answer]] = []
        for endpoint in (canary, stable):
            semaphore = asyncio.Semaphore(concurrency)  # one per endpoint: both see the same load
            requests += [
                _ask(session=session, case=case, endpoint=endpoint, params=params, api=api,
                     semaphore=semaphore, timeout=timeout_seconds, retries=retries,
                     backoff=backoff_seconds, judge=judge)
                for case in suite.cases
            ]
        flat: list[Answer] = await asyncio.gather(*requests)
    finally:
        if own_session:
            await session.close()
    n = len(suite.cases)
    canary_answers: tuple[Answer, ...] = tuple(flat[:n])
    stable_answers: tuple[Answer, ...] = tuple(flat[n:])
    outcomes = tuple(
        PairedOutcome(case.id, c.correct, s.correct, canary_error=c.error is not None,
                      stable_error=s.error is not None)
        for case, c, s in zip(suite.cases, canary_answers, stable_answers, strict=True)
    )
    return EvaluationRun(outcomes=outcomes, canary=canary_answers, stable=stable_answers)


_JUDGE_PROMPT = """You grade answers. Question:
{question}

Reference answer:
{expected}

Candidate answer:
{answer}

Is the candidate answer correct and consistent with the reference? \
Reply with exactly one word: YES or NO."""


@dataclass(frozen=True)
class OpenAIJudge:
    """A judge that asks another model (e.g. another ModelDeployment's endpoint) YES or NO."""

    endpoint: Endpoint
    session: aiohttp.ClientSession
    timeout_seconds: float = 60.0

    async def __call__(self, case: Case, answer: str) -> bool:
        question = "\n".join(f"{m['role']}: {m['content']}" for m in case.chat_messages())
        body = {
            "model": self.endpoint.model,
            "temperature": 0.0,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": _JUDGE_PROMPT.format(
                question=question, expected=case.expected, answer=answer)}],
        }
        url = self.endpoint.url("chat/completions")
        verdict = await _post_once(self.session, url, body, self.timeout_seconds)
        return verdict.strip().upper().startswith("YES")
