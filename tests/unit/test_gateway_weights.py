"""The canary split (pure): exact weights per request, sticky sessions, fallbacks; and endpoint picking."""

from __future__ import annotations

import random

import pytest

from modelplane.gateway.cache import StaticRoutes
from modelplane.gateway.picking import pick_endpoint
from modelplane.gateway.routing import RequestInfo
from modelplane.gateway.server import Gateway, _Pick
from modelplane.gateway.table import Backend, CanarySplit, Endpoint
from modelplane.gateway.weights import Group, choose_group, group_endpoints, session_point

C, S = Group.CANARY, Group.STABLE


@pytest.mark.parametrize(("weight", "deficit", "u", "session_u", "expected"), [
    pytest.param(0, 0.5, 0.0, None, (S, 0.0), id="weight-0-never-canary"),
    pytest.param(0, 0.0, 0.0, 0.0, (S, 0.0), id="weight-0-even-for-a-session"),
    pytest.param(100, -0.5, 0.99, None, (C, 0.0), id="weight-100-always-canary"),
    pytest.param(100, 0.0, 0.5, 0.99, (C, 0.0), id="weight-100-even-for-a-session"),
    pytest.param(10, 0.0, 0.05, None, (C, -0.9), id="draw-below-owed"),
    pytest.param(10, 0.0, 0.15, None, (S, 0.1), id="draw-above-owed"),
    pytest.param(10, 0.9, 0.999, None, (C, 0.0), id="one-owed-is-always-paid"),
    pytest.param(10, -0.5, 0.0, None, (S, -0.4), id="ahead-never-canary"),
    pytest.param(50, 0.0, 0.0, 0.3, (C, 0.0), id="session-below-weight"),
    pytest.param(50, 0.25, 0.0, 0.7, (S, 0.25), id="session-above-weight-deficit-untouched"),
])
def test_choose_group(weight: int, deficit: float, u: float, session_u: float | None,
                      expected: tuple[Group, float]) -> None:
    group, left = choose_group(weight, deficit=deficit, u=u, session_u=session_u)
    assert (group, round(left, 9)) == expected


@pytest.mark.parametrize("weight", range(1, 100))
def test_the_running_share_is_exact_within_one_request(weight: int) -> None:
    rng = random.Random(weight)
    deficit, canary = 0.0, 0
    for n in range(1, 2001):
        group, deficit = choose_group(weight, deficit=deficit, u=rng.random())
        canary += group is C
        assert abs(canary - n * weight / 100) < 1.0 + 1e-9
        assert -1.0 < deficit < 1.0


def test_a_session_keeps_its_side_and_stays_on_the_canary_as_the_weight_grows() -> None:
    points = [session_point(f"user-{i}", "ns/chat/bbbb") for i in range(500)]
    assert points == [session_point(f"user-{i}", "ns/chat/bbbb") for i in range(500)]
    assert all(0.0 <= p < 1.0 for p in points)
    for low, high in [(10, 20), (20, 50), (50, 90)]:
        for p in points:
            if choose_group(low, deficit=0.0, u=0.5, session_u=p)[0] is C:
                assert choose_group(high, deficit=0.0, u=0.5, session_u=p)[0] is C


def test_a_new_rollout_reshuffles_the_sessions() -> None:
    first = [session_point(f"user-{i}", "ns/chat/bbbb") < 0.1 for i in range(2000)]
    second = [session_point(f"user-{i}", "ns/chat/cccc") < 0.1 for i in range(2000)]
    assert first != second


STABLE = (Endpoint("10.0.0.1:8000", "s1", "aaaa"), Endpoint("10.0.0.2:8000", "s2", "aaaa"))
CANARY = (Endpoint("10.0.0.3:8000", "c1", "bbbb"),)
UNKNOWN = (Endpoint("10.0.0.4:8000", "u1", None),)


def backend(endpoints: tuple[Endpoint, ...], split: CanarySplit | None) -> Backend:
    return Backend("ns", "chat", "chat", "Ready", endpoints=endpoints, split=split)


@pytest.mark.parametrize(("endpoints", "split", "group", "expected"), [
    pytest.param(STABLE + CANARY, None, C, (STABLE + CANARY, S), id="no-split-all-are-stable"),
    pytest.param(STABLE + CANARY, CanarySplit("bbbb", 30), C, (CANARY, C), id="canary"),
    pytest.param(STABLE + CANARY, CanarySplit("bbbb", 30), S, (STABLE, S), id="stable"),
    pytest.param(STABLE + UNKNOWN, CanarySplit("bbbb", 30), S, (STABLE + UNKNOWN, S),
                 id="unknown-revision-is-stable"),
    pytest.param(STABLE, CanarySplit("bbbb", 30), C, (STABLE, S), id="canary-not-up-falls-back"),
    pytest.param(CANARY, CanarySplit("bbbb", 30), S, (CANARY, C), id="stable-gone-falls-back"),
    pytest.param(CANARY, CanarySplit("bbbb", 0), S, ((), S), id="weight-0-never-falls-back-to-canary"),
    pytest.param(CANARY, CanarySplit("bbbb", 0), C, ((), S), id="weight-0-canary-asked-anyway"),
])
def test_group_endpoints(endpoints: tuple[Endpoint, ...], split: CanarySplit | None, group: Group,
                         expected: tuple[tuple[Endpoint, ...], Group]) -> None:
    assert group_endpoints(backend(endpoints, split), group) == expected


@pytest.mark.parametrize(("outstanding", "u", "avoid", "expected"), [
    pytest.param({}, 0.0, (), "10.0.0.1:8000", id="idle-first-draw"),
    pytest.param({}, 0.99, (), "10.0.0.3:8000", id="idle-last-draw"),
    pytest.param({"10.0.0.1:8000": 2, "10.0.0.2:8000": 1, "10.0.0.3:8000": 3}, 0.0, (), "10.0.0.2:8000",
                 id="least-outstanding"),
    pytest.param({"10.0.0.1:8000": 1, "10.0.0.3:8000": 1}, 0.0, (), "10.0.0.2:8000", id="unknown-is-zero"),
    pytest.param({"10.0.0.1:8000": 1}, 0.99, (), "10.0.0.3:8000", id="tie-broken-by-draw"),
    pytest.param({}, 0.0, ("10.0.0.1:8000",), "10.0.0.2:8000", id="avoid-the-failed"),
    pytest.param({"10.0.0.2:8000": 5, "10.0.0.3:8000": 5}, 0.0, ("10.0.0.1:8000",), "10.0.0.2:8000",
                 id="avoid-even-if-least-loaded"),
    pytest.param({}, 0.5, ("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"), "10.0.0.2:8000",
                 id="all-avoided-pick-anyway"),
])
def test_pick_endpoint(outstanding: dict[str, int], u: float, avoid: tuple[str, ...], expected: str) -> None:
    three = (Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000"), Endpoint("10.0.0.3:8000"))
    picked = pick_endpoint(three, outstanding, u=u, avoid=avoid)
    assert picked is not None and picked.address == expected


def test_pick_endpoint_without_candidates() -> None:
    assert pick_endpoint((), {}, u=0.5) is None


def _fleet(stable: int, canary: int, weight: int) -> Backend:
    endpoints = tuple(Endpoint(f"10.0.1.{i}:8000", f"s{i}", "aaaa") for i in range(stable))
    endpoints += tuple(Endpoint(f"10.0.2.{i}:8000", f"c{i}", "bbbb") for i in range(canary))
    return backend(endpoints, CanarySplit("bbbb", weight))


@pytest.mark.parametrize("weight", range(1, 100))
def test_2000_requests_split_within_2_points_whatever_the_replica_counts(weight: int) -> None:
    """The issue's target, through the gateway's own picking: ±2 points over 2,000 requests."""
    rng = random.Random(1000 + weight)
    stable_n, canary_n = rng.randint(1, 6), rng.randint(1, 6)
    gateway = Gateway(StaticRoutes(), rng=random.Random(weight))
    fleet = _fleet(stable_n, canary_n, weight)
    canary = 0
    for _ in range(2000):
        picked = gateway._pick(fleet, RequestInfo("chat"), _Pick())
        assert picked is not None
        canary += picked.revision == "bbbb"
    assert abs(canary / 2000 * 100 - weight) <= 2, (stable_n, canary_n, canary)


@pytest.mark.parametrize("weight", [1, 10, 25, 50, 90, 99])
def test_sessions_split_by_weight_and_each_stays_put(weight: int) -> None:
    rng = random.Random(weight)
    gateway = Gateway(StaticRoutes(), rng=random.Random(weight))
    fleet = _fleet(2, 1, weight)
    sides: dict[str, bool] = {}
    for _ in range(20000):
        session = f"{rng.getrandbits(64):x}"
        picked = gateway._pick(fleet, RequestInfo("chat", session=session), _Pick())
        assert picked is not None
        sides[session] = picked.revision == "bbbb"
    share = sum(sides.values()) / len(sides) * 100
    assert abs(share - weight) <= 2, share
    for session, on_canary in list(sides.items())[:200]:
        picked = gateway._pick(fleet, RequestInfo("chat", session=session), _Pick())
        assert picked is not None and (picked.revision == "bbbb") == on_canary


def test_weight_0_sends_nothing_to_the_canary_and_holds_without_stable() -> None:
    gateway = Gateway(StaticRoutes(), rng=random.Random(0))
    fleet = _fleet(2, 2, 0)
    assert all(gateway._pick(fleet, RequestInfo("chat"), _Pick()).revision == "aaaa"  # type: ignore[union-attr]
               for _ in range(500))
    assert gateway._pick(_fleet(0, 2, 0), RequestInfo("chat"), _Pick()) is None


def test_least_outstanding_spreads_over_the_group() -> None:
    gateway = Gateway(StaticRoutes(), rng=random.Random(0))
    fleet = _fleet(3, 0, 0)
    for _ in range(9):
        picked = gateway._pick(fleet, RequestInfo("chat"), _Pick())
        assert picked is not None
        gateway.upstream.begin(picked)
    assert gateway.upstream.outstanding == {f"10.0.1.{i}:8000": 3 for i in range(3)}
