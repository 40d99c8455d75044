"""The simulator's LoRA pieces that the conformance suite does not reach: flags, environment, labels."""

from __future__ import annotations

from dataclasses import replace

import aiohttp
import pytest

from modelplane.rollout.graders import grade
from modelplane.rollout.suite import parse_suite
from modelplane_dev.sim.config import parse_vllm_args
from modelplane_dev.sim.lora import LoRAError, LoRARegistry, lora_info_labels, runtime_updating_allowed
from modelplane_dev.sim.quality import generate_suite, parse_behaviors, suite_jsonl
from modelplane_dev.sim.server import SimServer


@pytest.mark.parametrize(("argv", "want"), [
    ([], (False, 1, 16, None)),
    (["--enable-lora"], (True, 1, 16, None)),
    (["--enable-lora", "--max-loras", "4", "--max-lora-rank=64", "--max-cpu-loras", "32"], (True, 4, 64, 32)),
    (["--enable-lora", "--served-model-name", "chat"], (True, 1, 16, None)),
], ids=["off", "vllm-defaults", "all-flags", "enable-lora-takes-no-value"])
def test_lora_flags(argv: list[str], want: tuple[bool, int, int, int | None]) -> None:
    config = parse_vllm_args(["serve", "m", *argv])
    assert (config.enable_lora, config.max_loras, config.max_lora_rank, config.max_cpu_loras) == want
    assert config.model == "m"


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-loras", "4", "--max-cpu-loras", "2"], "max_cpu_loras (2) must be >= max_loras (4)"),
    (["--max-loras", "0"], "--max-loras and --max-lora-rank must be >= 1"),
], ids=["cpu-below-gpu", "zero"])
def test_bad_lora_flags_stop_the_server_as_vllm_does(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_vllm_args(["serve", "m", "--enable-lora", *argv])


@pytest.mark.parametrize(("value", "allowed"), [
    (None, False), ("1", True), ("True", True), ("true", True), (" TRUE ", True), ("0", False),
    ("yes", False),
], ids=["unset", "1", "True", "true", "spaced", "0", "yes"])
def test_runtime_updating_env_reads_as_vllm_reads_it(value: str | None, allowed: bool) -> None:
    env = {} if value is None else {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": value}
    assert runtime_updating_allowed(env) is allowed


def test_lora_info_labels_name_each_adapter_once_in_order() -> None:
    assert lora_info_labels(max_loras=2, waiting=["b", "a", "b"], running=["a"]) == ("2", "b,a", "a")
    assert lora_info_labels(max_loras=1, waiting=[], running=[]) == ("1", "", "")


def test_ids_are_kept_by_an_in_place_load_and_a_disabled_engine_refuses() -> None:
    registry = LoRARegistry(enabled=True)
    registry.load({"lora_name": "a", "lora_path": "p1"}, rank=8, missing=False)
    registry.load({"lora_name": "b", "lora_path": "p2"}, rank=8, missing=False)
    registry.load({"lora_name": "a", "lora_path": "p3", "load_inplace": True}, rank=8, missing=False)
    held = [(x.name, x.path, x.int_id) for x in registry.adapters.values()]
    assert held == [("a", "p3", 1), ("b", "p2", 2)]
    with pytest.raises(LoRAError) as refused:
        LoRARegistry(enabled=False).load({"lora_name": "a", "lora_path": "p"}, rank=8, missing=False)
    assert (refused.value.status, refused.value.message) == (
        500, "LoRA is not enabled. Use --enable-lora to enable LoRA.")


def test_adapter_behaviour_by_path_then_name() -> None:
    behaviors = parse_behaviors("'*': {accuracy: 0.9}\norg/sql: {accuracy: 0.5, lora_rank: 32}\nsupport: "
                                "{lora_missing: true}\n")
    sql = behaviors.for_adapter("org/sql", "x")
    assert (sql.accuracy, sql.lora_rank) == (0.5, 32)
    assert behaviors.for_adapter("org/other", "support").lora_missing
    assert behaviors.for_adapter("org/other", "other").accuracy == 0.9


async def test_each_adapter_answers_with_its_own_accuracy() -> None:
    """What lets the evaluation gate tell a good adapter from a bad one on the same base."""
    behaviors = parse_behaviors("org/good: {accuracy: 0.95}\norg/bad: {accuracy: 0.4}\n")
    config = replace(parse_vllm_args(["serve", "m", "--served-model-name", "base", "--enable-lora"]),
                     host="127.0.0.1", port=0, allow_runtime_lora_updating=True)
    sim = SimServer(config, behaviors=behaviors)
    await sim.start()
    cases = parse_suite(suite_jsonl(generate_suite(120, seed=3))).cases
    scores: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession() as http:
            for name in ("good", "bad"):
                async with http.post(f"{sim.url}/v1/load_lora_adapter",
                                     json={"lora_name": name, "lora_path": f"org/{name}"}) as r:
                    assert r.status == 200
                right = 0
                for case in cases:
                    async with http.post(f"{sim.url}/v1/chat/completions",
                                         json={"model": name, "messages": case.chat_messages()}) as r:
                        text = (await r.json())["choices"][0]["message"]["content"]
                    right += grade(text, case)
                scores[name] = right / len(cases)
    finally:
        await sim.stop()
    assert scores["good"] > 0.85 and scores["bad"] < 0.55, scores
