"""Prefix affinity (pure): consistent hashing with bounded load, in rendezvous form."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from modelplane.gateway.picking import affinity_score, pick_by_prefix, prefix_digest
from modelplane.gateway.table import Endpoint

FOUR = tuple(Endpoint(f"10.0.0.{i}:8000") for i in range(1, 5))


def ranking(prefix: str, endpoints: tuple[Endpoint, ...] = FOUR) -> list[str]:
    digest = prefix_digest(prefix)
    ranked = sorted(endpoints, key=lambda e: affinity_score(digest, e.address), reverse=True)
    return [e.address for e in ranked]


@pytest.mark.parametrize(("load", "factor", "avoid", "rank_taken"), [
    pytest.param({}, 1.25, (), 0, id="idle-first-in-rank"),
    pytest.param({0: 1, 1: 1, 2: 1, 3: 1}, 1.25, (), 0, id="even-load-first-in-rank"),
    # total 4 → bound ceil(1.25 × 5 / 4) = 2: the first in rank at 2 is full.
    pytest.param({0: 2, 1: 1, 2: 1}, 1.25, (), 1, id="first-full-spills-to-second"),
    pytest.param({0: 3, 1: 3, 2: 0, 3: 0}, 1.25, (), 2, id="first-two-full"),
    # total 6 → bound ceil(2 × 7 / 4) = 4: a looser factor keeps the first.
    pytest.param({0: 3, 1: 3}, 2.0, (), 0, id="looser-bound-keeps-affinity"),
    pytest.param({}, 1.25, (0,), 1, id="avoid-the-failed"),
])
def test_pick_by_prefix(load: dict[int, int], factor: float, avoid: tuple[int, ...], rank_taken: int) -> None:
    order = ranking("system prompt A")
    outstanding = {order[i]: n for i, n in load.items()}
    picked = pick_by_prefix(FOUR, outstanding, prefix="system prompt A", load_factor=factor,
                            avoid=[order[i] for i in avoid])
    assert picked is not None and picked.address == order[rank_taken]


def test_pick_by_prefix_without_candidates_and_with_a_bad_factor() -> None:
    assert pick_by_prefix((), {}, prefix="p", load_factor=1.25) is None
    with pytest.raises(ValueError, match="load_factor"):
        pick_by_prefix(FOUR, {}, prefix="p", load_factor=0.5)


def test_prefixes_spread_over_the_endpoints() -> None:
    homes = Counter(ranking(f"tenant-{i}")[0] for i in range(4000))
    assert set(homes) == {e.address for e in FOUR}
    assert all(abs(n - 1000) < 150 for n in homes.values()), homes


def test_removing_an_endpoint_moves_only_its_prefixes() -> None:
    before = {f"tenant-{i}": ranking(f"tenant-{i}")[0] for i in range(2000)}
    after = {p: ranking(p, FOUR[:3])[0] for p in before}
    moved = [p for p in before if before[p] != after[p]]
    assert moved and all(before[p] == FOUR[3].address for p in moved)


def test_the_busiest_endpoint_stays_within_the_bound_under_a_skewed_load() -> None:
    """One hot prefix and a few cold ones: the hot one spills instead of piling up."""
    rng = random.Random(5)
    outstanding: dict[str, int] = {}
    in_flight: list[str] = []
    for _ in range(5000):
        if in_flight and rng.random() < 0.5:  # a request finishes
            done = in_flight.pop(rng.randrange(len(in_flight)))
            outstanding[done] -= 1
        prefix = "hot system prompt" if rng.random() < 0.8 else f"cold-{rng.randrange(20)}"
        picked = pick_by_prefix(FOUR, outstanding, prefix=prefix, load_factor=1.25)
        assert picked is not None
        total = sum(outstanding.values())
        assert outstanding.get(picked.address, 0) < math.ceil(1.25 * (total + 1) / 4)
        outstanding[picked.address] = outstanding.get(picked.address, 0) + 1
        in_flight.append(picked.address)
