"""``modelplane load`` as a command: length specs, progress, the printed report and the JSON file."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelplane import cli
from modelplane_dev import loadgen
from modelplane_dev.loadgen import Lengths, LoadConfig, Progress, parse_lengths, parse_schedule, run_load
from modelplane_dev.sim.config import SimConfig
from modelplane_dev.sim.server import SimServer


@pytest.mark.parametrize(("spec", "expected"), [
    ("200", Lengths(200)),
    ("lognormal:mean=200,sigma=0.6", Lengths(200, sigma=0.6)),
    ("lognormal:mean=64,sigma=1,min=8,max=512", Lengths(64, minimum=8, maximum=512, sigma=1.0)),
], ids=["fixed", "lognormal", "lognormal-clipped"])
def test_parse_lengths(spec: str, expected: Lengths) -> None:
    assert parse_lengths(spec) == expected


@pytest.mark.parametrize("spec", ["0", "uniform:1-5", "lognormal:median=3", "lognormal:mean=10,min=20,max=5"],
                         ids=["zero", "unknown-kind", "unknown-key", "max-below-min"])
def test_bad_lengths_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="length"):
        parse_lengths(spec)


def test_lognormal_lengths_keep_their_mean() -> None:
    rng = random.Random(1)
    draws = [Lengths(200, sigma=0.6).draw(rng) for _ in range(20_000)]
    assert sum(draws) / len(draws) == pytest.approx(200, rel=0.03)
    assert min(draws) >= 1 and len(set(draws)) > 100


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = SimServer(SimConfig(model="sim/llama-3.1-8b", served_model_name="chat", host="127.0.0.1", port=0,
                                 max_model_len=4096))
    await server.start()
    yield server
    await server.stop()


async def test_progress_is_reported_while_the_run_goes(sim: SimServer) -> None:
    seen: list[Progress] = []
    config = LoadConfig(base_url=f"{sim.url}/v1", schedule=parse_schedule("constant:20"), duration=1.5,
                        output_tokens=Lengths(4))
    report = await run_load(config, progress=seen.append, progress_every=0.5)
    assert len(seen) >= 3
    assert [p.sent for p in seen] == sorted(p.sent for p in seen)
    assert seen[-1].ok == report.ok == report.sent and seen[-1].in_flight == 0


async def test_max_requests_bounds_the_run(sim: SimServer) -> None:
    config = LoadConfig(base_url=f"{sim.url}/v1", schedule=parse_schedule("constant:50"), duration=30,
                        max_requests=7, output_tokens=Lengths(2))
    report = await run_load(config)
    assert report.sent == report.ok == 7
    assert report.to_dict()["generatedTokens"] == 14


async def test_the_command_prints_a_report_and_writes_json(sim: SimServer, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    loadgen.register(parser.add_subparsers())
    out = tmp_path / "report.json"
    args = parser.parse_args(["load", "--base-url", f"{sim.url}/v1", "--schedule", "step:5@0,20@0.5",
                              "--duration", "1.5", "--prompt-tokens", "lognormal:mean=50,sigma=0.5",
                              "--output-tokens", "6", "--progress-every", "0.5", "--out", str(out)])
    code = await asyncio.to_thread(args.func, args)
    assert code == 0
    printed = capsys.readouterr()
    assert "TTFT    p50" in printed.out and "latency p50" in printed.out
    assert "sent=" in printed.err
    report = json.loads(out.read_text())
    assert report["sent"] == report["ok"] > 5 and report["errors"] == 0
    assert report["generatedTokens"] == 6 * report["ok"]
    assert 0 < report["ttftSeconds"]["p50"] <= report["latencySeconds"]["p50"]
    assert report["targetRPS"] == pytest.approx((5 * 0.5 + 20 * 1.0) / 1.5, rel=0.01)


def test_the_command_refuses_a_bad_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    loadgen.register(parser.add_subparsers())
    args = parser.parse_args(["load", "--schedule", "sine:3"])
    assert args.func(args) == 2
    assert "schedule" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--base-url", "--url"])
async def test_the_command_takes_the_url_as_base_url_or_url(sim: SimServer, flag: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(cli.main, ["load", flag, f"{sim.url}/v1", "--schedule", "constant:10",
                                              "--duration", "0.5", "--output-tokens", "2"])
    assert code == 0
    assert "latency p50" in capsys.readouterr().out


def test_the_readme_s_modelplane_load_command_parses() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"`modelplane load ([^`]*)`", readme)
    assert commands, "the README shows no modelplane load command"
    parser = argparse.ArgumentParser()
    loadgen.register(parser.add_subparsers())
    for command in commands:
        # The README's placeholders (URL, NAME, "…") stand for values; argparse fails on an unknown flag.
        args = parser.parse_args(["load", *command.replace("…", "constant:1").split()])
        assert args.base_url == "URL" and args.model == "NAME"
