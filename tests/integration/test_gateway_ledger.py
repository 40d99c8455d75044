"""The gateway's usage ledger on the dev cluster's API server: two gateway processes share one team's
token limit and budget through their ConfigMap shards, a restarted process takes its counts back
without counting them twice, nothing is written at idle, and shards of an earlier month are swept."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable

import pytest

from modelplane.controller import kube
from modelplane.gateway.errors import GatewayError
from modelplane.gateway.ledger import (
    DATA_KEY,
    SHARD_LABEL,
    ClusterLedger,
    Usage,
    month_of,
    shard_object,
    team_key,
)
from modelplane.gateway.teams import Limiter, Team
from tests.clusterfixtures import ClusterHandle
from tests.waiting import wait_for

SYNC = 0.2


@contextlib.asynccontextmanager
async def running(client: kube.Kube, namespace: str, name: str, *,
                  sync: float = SYNC) -> AsyncIterator[ClusterLedger]:
    ledger = ClusterLedger(client, namespace, name, sync_seconds=sync)
    task = asyncio.create_task(ledger.run())
    try:
        await wait_for(lambda: ledger.synced and (ledger.ticks > 0 or sync > SYNC), timeout=30,
                       what=f"ledger {name} running")
        yield ledger
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_two_processes_share_a_limit_and_a_restart_counts_once(
        cluster: ClusterHandle, kube_client: kube.Kube, namespace: str) -> None:
    team = Team("alpha", tokens_per_minute=100, monthly_budget_usd=1.0)
    async with running(kube_client, namespace, "modelplane-usage-a-8000-w0") as a, \
            running(kube_client, namespace, "modelplane-usage-b-8000-w0") as b:
        limit_a, limit_b = Limiter(a), Limiter(b)
        now = time.time()
        limit_a.add("alpha", tokens=60, usd=0.6, now=now)
        limit_b.check(team, now=now)  # b has not heard yet; a alone is under both limits
        await wait_for(lambda: b.tokens("alpha", now=time.time()) == 60, timeout=30,
                       what="b to read a's 60 tokens from a's shard")
        assert b.spent(team_key("alpha"), now=time.time()) == pytest.approx(0.6)
        limit_b.add("alpha", tokens=40, usd=0.4, now=time.time())
        # Each process alone is under the limits; together they are at them: both refuse.
        await wait_for(lambda: a.tokens("alpha", now=time.time()) == 100, timeout=30,
                       what="a to read b's 40 tokens")
        for limiter in (limit_a, limit_b):
            with pytest.raises(GatewayError) as caught:
                limiter.check(team, now=time.time())
            assert caught.value.status == 429 and "monthly budget of $1" in caught.value.message

        # Nothing counted, nothing written: five more sync intervals without a write.
        writes, ticks = a.writes + b.writes, a.ticks
        await wait_for(lambda: a.ticks >= ticks + 5, timeout=30, what="five idle sync intervals")
        assert a.writes + b.writes == writes

    # a restarts under its name (a container restart keeps the pod's name): it takes its counts back.
    shard = await kube_client.get(kube.CONFIGMAPS, "modelplane-usage-a-8000-w0", namespace=namespace)
    assert shard is not None and shard["metadata"]["labels"][SHARD_LABEL] == "gateway"
    assert Usage.decode(shard["data"][DATA_KEY]).usd == {team_key("alpha"): pytest.approx(0.6)}
    async with running(kube_client, namespace, "modelplane-usage-a-8000-w0") as a2, \
            running(kube_client, namespace, "modelplane-usage-b-8000-w0") as b2:
        assert a2.own.spent(team_key("alpha"), month_of(time.time())) == pytest.approx(0.6)
        assert b2.own.spent(team_key("alpha"), month_of(time.time())) == pytest.approx(0.4)
        a2.add(team_key("alpha"), 0.1, now=time.time())
        await wait_for(lambda: b2.spent(team_key("alpha"), now=time.time()) == pytest.approx(1.1), timeout=30,
                       what="b to read a's counts after its restart, once: 0.6 + 0.1 + b's 0.4")
        assert a2.spent(team_key("alpha"), now=time.time()) == pytest.approx(1.1)


async def test_old_months_are_swept_and_a_bad_shard_counts_nothing(
        cluster: ClusterHandle, kube_client: kube.Kube, namespace: str) -> None:
    old = shard_object("modelplane-usage-old-8000-w0", namespace,
                       Usage("2020-01", {team_key("alpha"): 50.0}), resource_version=None)
    current = shard_object("modelplane-usage-now-8000-w0", namespace,
                           Usage(month_of(time.time()), {team_key("alpha"): 2.0}), resource_version=None)
    bad = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "modelplane-usage-bad", "namespace": namespace,
                        "labels": {SHARD_LABEL: "gateway"}},
           "data": {DATA_KEY: "{not json"}}
    for obj in (old, current, bad):
        await kube_client.create(obj)
    async with running(kube_client, namespace, "modelplane-usage-me-8000-w0") as me:
        async def shards() -> set[str]:
            return {o["metadata"]["name"] for o in await kube_client.list(
                kube.CONFIGMAPS, namespace=namespace, label_selector=SHARD_LABEL)}

        # The sweep at start deletes the earlier month's shard; the unreadable one is left alone.
        await wait_for(lambda: _eq(shards(), {"modelplane-usage-now-8000-w0", "modelplane-usage-bad"}),
                       timeout=30, what="the 2020-01 shard swept")
        assert set(me.others) == {"modelplane-usage-now-8000-w0"}
        assert me.spent(team_key("alpha"), now=time.time()) == pytest.approx(2.0)  # not 2020's 50
        assert me.writes == 0  # it counted nothing: no shard of its own


async def _eq(value: Awaitable[set[str]], want: set[str]) -> bool:
    return await value == want


async def test_a_stopping_process_writes_what_it_counted_since_its_last_sync(
        cluster: ClusterHandle, kube_client: kube.Kube, namespace: str) -> None:
    async with running(kube_client, namespace, "modelplane-usage-stop-8000-w0", sync=3600) as ledger:
        await wait_for(lambda: ledger._resumed, timeout=30, what="the ledger to read its shards")
        ledger.add(team_key("alpha"), 0.25, now=time.time())
        assert ledger.writes == 0  # no sync interval has passed (an hour)
    # Cancelled like a gateway on SIGTERM: its last counts were written on the way out.
    shard = await kube_client.get(kube.CONFIGMAPS, "modelplane-usage-stop-8000-w0", namespace=namespace)
    assert shard is not None
    assert Usage.decode(shard["data"][DATA_KEY]).usd == {team_key("alpha"): pytest.approx(0.25)}
