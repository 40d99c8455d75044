"""The evaluation runner against two tiny OpenAI-compatible servers on 127.0.0.1 answering from tables."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from modelplane.rollout.evaluate import (
    Api,
    Endpoint,
    OpenAIJudge,
    SamplingParams,
    build_request,
    run_evaluation,
)
from modelplane.rollout.stats import evaluate_gate
from modelplane.rollout.suite import parse_suite


@dataclass
class Peer:
    """A server that answers each prompt from ``table``; some prompts fail or hang on purpose."""

    table: dict[str, str]
    fail_first: set[str] = field(default_factory=set)  #: answer 503 once, then normally
    always_fail: set[str] = field(default_factory=set)  #: answer 400 every time
    hang: set[str] = field(default_factory=set)  #: never answer (until the client gives up)
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # let other requests in, so concurrency is observable
            if prompt in self.hang:
                await asyncio.Event().wait()  # cancelled when the client disconnects or the server stops
            if prompt in self.always_fail:
                return web.json_response({"error": "bad request"}, status=400)
            if prompt in self.fail_first:
                self.fail_first.discard(prompt)
                return web.json_response({"error": "overloaded"}, status=503)
            text = self.table.get(prompt, "I do not know")
            if "messages" in body:
                return web.json_response(
                    {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
                )
            return web.json_response({"choices": [{"index": 0, "text": text}]})
        finally:
            self.in_flight -= 1


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(peer: Peer) -> Peer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", peer.handle)
        app.router.add_post("/v1/completions", peer.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        peer.url = f"http://127.0.0.1:{port}"
        return peer

    yield start
    for runner in runners:
        await runner.cleanup()


SUITE = parse_suite(
    "\n".join(
        json.dumps(c)
        for c in [
            {"id": "capital", "prompt": "Capital of France?", "expected": "Paris"},
            {"id": "sum", "prompt": "2+2?", "expected": 4, "grader": "numeric"},
            {"id": "mcq", "prompt": "Sky colour? A) red B) blue", "expected": "B", "grader": "choice"},
            {
                "id": "json",
                "prompt": "Give JSON",
                "grader": "json_schema",
                "schema": {"type": "object", "required": ["name"]},
            },
            {"id": "flaky", "prompt": "Flaky?", "expected": "yes"},
            {"id": "long", "prompt": "Long?", "expected": "ok", "max_tokens": 7},
        ]
    )
)

GOOD = {
    "Capital of France?": "Paris.",
    "2+2?": "It is 4",
    "Sky colour? A) red B) blue": "Answer: B",
    "Give JSON": '{"name": "x"}',
    "Flaky?": "Yes",
    "Long?": "ok",
}


async def test_pairs_outcomes_and_grades(serve: Any) -> None:
    worse = dict(GOOD, **{"2+2?": "It is 5", "Give JSON": "name: x"})
    canary = await serve(Peer(table=worse))
    stable = await serve(Peer(table=GOOD))
    run = await run_evaluation(
        suite=SUITE,
        canary=Endpoint(canary.url, "m"),
        stable=Endpoint(stable.url + "/v1", "m"),
        backoff_seconds=0,
    )
    assert [o.case_id for o in run.outcomes] == [c.id for c in SUITE.cases]
    assert [o.stable_correct for o in run.outcomes] == [True] * 6
    assert [o.canary_correct for o in run.outcomes] == [True, False, True, False, True, True]
    assert run.canary_errors == run.stable_errors == 0
    gate = evaluate_gate(run.outcomes, min_score=0.5, max_regression=0.05)
    assert not gate.passed and gate.failing_case_ids == ("json", "sum")


async def test_same_sampling_parameters_on_both_sides(serve: Any) -> None:
    canary = await serve(Peer(table=GOOD))
    stable = await serve(Peer(table=GOOD))
    await run_evaluation(
        suite=SUITE,
        canary=Endpoint(canary.url, "ft"),
        stable=Endpoint(stable.url, "ft"),
        params=SamplingParams(max_tokens=32, seed=3),
    )

    def key(body: dict[str, Any]) -> str:
        return json.dumps(body, sort_keys=True)

    assert sorted(map(key, canary.requests)) == sorted(map(key, stable.requests))
    long = next(b for b in canary.requests if b["messages"][-1]["content"] == "Long?")
    assert (long["max_tokens"], long["temperature"], long["seed"], long["model"]) == (7, 0.0, 3, "ft")


async def test_retries_then_reports_failures_as_errors(serve: Any) -> None:
    canary = await serve(
        Peer(table=GOOD, fail_first={"Flaky?"}, always_fail={"Capital of France?"}, hang={"Long?"})
    )
    stable = await serve(Peer(table=GOOD))
    run = await run_evaluation(
        suite=SUITE,
        canary=Endpoint(canary.url, "m"),
        stable=Endpoint(stable.url, "m"),
        timeout_seconds=0.3,
        retries=1,
        backoff_seconds=0,
    )
    by_id = {a.case_id: a for a in run.canary}
    assert by_id["flaky"].correct and by_id["flaky"].attempts == 2 and by_id["flaky"].error is None
    assert not by_id["capital"].correct and by_id["capital"].attempts == 1  # 400 is not retried
    assert "HTTP 400" in (by_id["capital"].error or "")
    assert not by_id["long"].correct and by_id["long"].attempts == 2
    assert "no answer within 0.3s" in (by_id["long"].error or "")
    assert run.canary_errors == 2 and run.stable_errors == 0
    # A failed request is an error of its case, not a wrong answer: the gate leaves the pair out.
    errored = {o.case_id for o in run.outcomes if o.canary_error}
    assert errored == {"capital", "long"} and not any(o.stable_error for o in run.outcomes)


def numbered_suite(n: int) -> Any:
    return parse_suite("\n".join(json.dumps({"id": f"c{i:03d}", "prompt": f"q{i}", "expected": "yes"})
                                 for i in range(n)))


async def test_a_model_that_answers_nothing_gets_no_verdict(serve: Any) -> None:
    """Both revisions refuse every request (a base model without a chat template answers 400/404).
    Counted as wrong answers, 0.000 vs 0.000 with no discordant pair passed the gate from 133 cases."""
    suite = numbered_suite(140)
    prompts = {f"q{i}" for i in range(140)}
    canary = await serve(Peer(table={}, always_fail=set(prompts)))
    stable = await serve(Peer(table={}, always_fail=set(prompts)))
    run = await run_evaluation(suite=suite, canary=Endpoint(canary.url, "m"),
                               stable=Endpoint(stable.url, "m"), backoff_seconds=0)
    gate = evaluate_gate(run.outcomes, min_score=0.0)
    assert not gate.passed and gate.errored
    assert (gate.canary_errors, gate.stable_errors, gate.n) == (140, 140, 0)


async def test_stable_errors_do_not_win_the_gate_for_the_canary(serve: Any) -> None:
    """Canary 0.82 vs stable 0.85; stable answers 400 to a fifth of the suite. Counted as wrong answers,
    stable's errors made the canary look better and it passed."""
    suite = numbered_suite(200)
    canary = await serve(Peer(table={f"q{i}": "yes" for i in range(164)}))
    stable = await serve(Peer(table={f"q{i}": "yes" for i in range(170)},
                              always_fail={f"q{i}" for i in range(40)}))
    run = await run_evaluation(suite=suite, canary=Endpoint(canary.url, "m"),
                               stable=Endpoint(stable.url, "m"), backoff_seconds=0)
    gate = evaluate_gate(run.outcomes, min_score=0.0)
    assert not gate.passed and gate.errored and gate.stable_errors == 40


async def test_unreachable_endpoint_is_reported_not_raised(serve: Any) -> None:
    stable = await serve(Peer(table=GOOD))
    run = await run_evaluation(
        suite=SUITE,
        canary=Endpoint("http://127.0.0.1:9", "m"),
        stable=Endpoint(stable.url, "m"),
        retries=1,
        backoff_seconds=0,
        timeout_seconds=2,
    )
    assert run.canary_errors == len(SUITE) and not any(o.canary_correct for o in run.outcomes)
    assert all(o.stable_correct for o in run.outcomes)


async def test_concurrency_is_bounded_per_endpoint(serve: Any) -> None:
    many = parse_suite(
        "\n".join(json.dumps({"id": f"c{i}", "prompt": f"p{i}", "expected": "x"}) for i in range(40))
    )
    canary = await serve(Peer(table={}))
    stable = await serve(Peer(table={}))
    await run_evaluation(
        suite=many, canary=Endpoint(canary.url, "m"), stable=Endpoint(stable.url, "m"), concurrency=3
    )
    assert 1 <= canary.max_in_flight <= 3 and 1 <= stable.max_in_flight <= 3
    assert len(canary.requests) == len(stable.requests) == 40


async def test_judge_cases_ask_the_judge(serve: Any) -> None:
    suite = parse_suite(
        json.dumps({"id": "j", "prompt": "Summarise", "expected": "a short summary", "grader": "judge"})
    )
    canary = await serve(Peer(table={"Summarise": "good"}))
    stable = await serve(Peer(table={"Summarise": "bad"}))

    class Judge(Peer):
        async def handle(self, request: web.Request) -> web.StreamResponse:
            prompt = (await request.json())["messages"][0]["content"]
            verdict = "YES" if "Candidate answer:\ngood" in prompt else "NO"
            return web.json_response({"choices": [{"message": {"role": "assistant", "content": verdict}}]})

    judge_peer = await serve(Judge(table={}))
    async with aiohttp.ClientSession() as session:
        judge = OpenAIJudge(endpoint=Endpoint(judge_peer.url, "judge"), session=session)
        run = await run_evaluation(
            suite=suite,
            canary=Endpoint(canary.url, "m"),
            stable=Endpoint(stable.url, "m"),
            judge=judge,
            session=session,
        )
    assert (run.outcomes[0].canary_correct, run.outcomes[0].stable_correct) == (True, False)


async def test_judge_cases_without_a_judge_are_errors_and_reported(serve: Any) -> None:
    suite = parse_suite(json.dumps({"id": "j", "prompt": "Summarise", "expected": "x", "grader": "judge"}))
    peer = await serve(Peer(table={"Summarise": "x"}))
    run = await run_evaluation(suite=suite, canary=Endpoint(peer.url, "m"), stable=Endpoint(peer.url, "m"))
    assert not run.outcomes[0].canary_correct and "no judge" in (run.canary[0].error or "")
    assert run.outcomes[0].canary_error and run.outcomes[0].stable_error


async def test_completions_api_for_base_models(serve: Any) -> None:
    peer = await serve(Peer(table=GOOD))
    run = await run_evaluation(
        suite=SUITE, canary=Endpoint(peer.url, "m"), stable=Endpoint(peer.url, "m"), api=Api.COMPLETIONS
    )
    assert all(o.canary_correct for o in run.outcomes)
    assert all("prompt" in body for body in peer.requests)


def test_build_request_prefers_case_overrides() -> None:
    case = SUITE.cases[5]
    url, body = build_request(
        case, Endpoint("http://h:8000/v1/", "m"), SamplingParams(max_tokens=99), Api.CHAT
    )
    assert url == "http://h:8000/v1/chat/completions"
    assert body == {
        "model": "m",
        "max_tokens": 7,
        "temperature": 0.0,
        "messages": [{"role": "user", "content": "Long?"}],
    }
