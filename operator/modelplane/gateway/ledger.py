"""The usage ledger the gateway's processes share: teams' tokens per minute and spend per month, and
routes' external spend per month, counted across every replica and worker and kept over restarts.

Each gateway process counts what it relays into its own **shard**, a ConfigMap labelled
``modelplane.dev/usage-shard`` in the ledger's namespace (the gateway's own), named after its pod,
port and worker (``modelplane-usage-<pod>-<port>-w<worker>``), and only it writes that shard: at
most once per sync interval, and only when its counts changed (nothing at idle). Every process
watches all shards and adds the others' counts to its own when it checks a limit, so a team's
limit holds across N replicas to within what the other processes counted in the last interval.

A process that restarts under the same name (a container restart keeps the pod's name) takes its
shard's counts back; a new pod starts a new shard, and the old pod's shard keeps counting toward
the month (shards of an earlier month count nothing and any process deletes them). Pure parts
(``Usage``, ``Ledger``) are table-tested in tests/unit/test_gateway_ledger.py; ``ClusterLedger``
is the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelplane.controller import kube
from modelplane.controller.informer import Informer, Obj
from modelplane.gateway.watched import Watched

log = logging.getLogger("modelplane.gateway")

SHARD_LABEL = "modelplane.dev/usage-shard"
SHARD_PREFIX = "modelplane-usage-"
DATA_KEY = "usage.json"
#: The window of the token rate limit, seconds.
WINDOW_SECONDS = 60.0
#: Seconds between two writes of a process's shard while its counts change.
DEFAULT_SYNC_SECONDS = 1.0
#: Seconds a stopping process waits to write its last counts.
FLUSH_SECONDS = 2.0
#: Seconds between two sweeps for shards of an earlier month.
SWEEP_SECONDS = 600.0


def month_of(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m")


def team_key(team: str) -> str:
    return f"team/{team}"


def route_key(namespace: str, name: str) -> str:
    return f"route/{namespace}/{name}"


@dataclass
class Usage:
    """What one process counted: US dollars per key in ``month``; tokens per team per second."""

    month: str = ""
    usd: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, dict[int, int]] = field(default_factory=dict)

    def roll(self, month: str) -> None:
        """A new month starts its spend from zero."""
        if month != self.month:
            self.month, self.usd = month, {}

    def prune(self, now: float) -> None:
        """Drop the seconds that have left the token window."""
        for team in list(self.tokens):
            seconds = {s: n for s, n in self.tokens[team].items() if s > now - WINDOW_SECONDS}
            if seconds:
                self.tokens[team] = seconds
            else:
                del self.tokens[team]

    def spent(self, key: str, month: str) -> float:
        return self.usd.get(key, 0.0) if self.month == month else 0.0

    def tokens_in_window(self, team: str, now: float) -> int:
        return sum(n for s, n in (self.tokens.get(team) or {}).items() if s > now - WINDOW_SECONDS)

    def counts_tokens(self, now: float) -> bool:
        """Whether any team's tokens are still in the window."""
        return any(s > now - WINDOW_SECONDS for secs in self.tokens.values() for s in secs)

    def encode(self) -> str:
        return json.dumps({"month": self.month, "usd": dict(sorted(self.usd.items())),
                           "tokens": {t: {str(s): n for s, n in sorted(secs.items())}
                                      for t, secs in sorted(self.tokens.items())}},
                          separators=(",", ":"))

    @staticmethod
    def decode(text: str) -> Usage:
        """Parse a shard's data; raises ``ValueError`` saying what is wrong."""
        try:
            doc = json.loads(text)
            month = doc.get("month", "")
            if not isinstance(month, str):
                raise TypeError("month is not a string")
            usd = {str(k): float(v) for k, v in (doc.get("usd") or {}).items()}
            tokens = {str(t): {int(s): int(n) for s, n in secs.items()}
                      for t, secs in (doc.get("tokens") or {}).items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a usage shard: {exc}") from None
        if any(not math.isfinite(v) or v < 0 for v in usd.values()):
            raise ValueError("not a usage shard: a negative or non-finite amount")
        return Usage(month, usd, tokens)

    def merged(self, other: Usage, now: float) -> Usage:
        """This and ``other`` added, in ``now``'s month."""
        month = month_of(now)
        out = Usage(month)
        for part in (self, other):
            if part.month == month:
                for k, v in part.usd.items():
                    out.usd[k] = out.usd.get(k, 0.0) + v
            for team, secs in part.tokens.items():
                mine = out.tokens.setdefault(team, {})
                for s, n in secs.items():
                    mine[s] = mine.get(s, 0) + n
        out.prune(now)
        return out


@dataclass
class Ledger:
    """This process's counts (``own``) plus the other processes' shards (``others``). Pure: time is given."""

    own: Usage = field(default_factory=Usage)
    others: dict[str, Usage] = field(default_factory=dict)
    #: bumped at each change of ``own``; the publisher writes when it moved since the last write
    version: int = 0

    def add(self, key: str, usd: float, *, now: float) -> None:
        if usd > 0:
            self.own.roll(month_of(now))
            self.own.usd[key] = self.own.usd.get(key, 0.0) + usd
            self.version += 1

    def add_tokens(self, team: str, tokens: int, *, now: float) -> None:
        if tokens > 0:
            seconds = self.own.tokens.setdefault(team, {})
            second = int(now)
            seconds[second] = seconds.get(second, 0) + tokens
            self.version += 1

    def spent(self, key: str, *, now: float) -> float:
        """US dollars ``key`` spent in ``now``'s month, by every process."""
        month = month_of(now)
        return self.own.spent(key, month) + sum(u.spent(key, month) for u in self.others.values())

    def tokens(self, team: str, *, now: float) -> int:
        """Tokens ``team`` used over the last ``WINDOW_SECONDS``, by every process."""
        return self.own.tokens_in_window(team, now) + sum(u.tokens_in_window(team, now)
                                                          for u in self.others.values())

    def snapshot(self, now: float) -> Usage:
        """``own`` as its shard stores it: this month, the token window pruned."""
        self.own.roll(month_of(now))
        self.own.prune(now)
        return Usage(self.own.month, dict(self.own.usd),
                     {t: dict(secs) for t, secs in self.own.tokens.items()})

    def resume(self, stored: Usage, *, now: float) -> None:
        """Take back what this process's shard held before a restart, adding what was counted since."""
        self.own = self.own.merged(stored, now)
        self.version += 1


def shard_name(pod: str, port: int, worker: int) -> str:
    """A DNS-1123 name for one process's shard."""
    base = re.sub(r"[^a-z0-9-]+", "-", pod.lower()).strip("-") or "gateway"
    suffix = f"-{port}-w{worker}"
    return SHARD_PREFIX + base[:253 - len(SHARD_PREFIX) - len(suffix)].rstrip("-") + suffix


def shard_object(name: str, namespace: str, usage: Usage, *, resource_version: str | None) -> Obj:
    meta: dict[str, Any] = {"name": name, "namespace": namespace,
                            "labels": {SHARD_LABEL: "gateway", "app.kubernetes.io/managed-by": "modelplane"}}
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {DATA_KEY: usage.encode()}}


def read_shard(obj: Mapping[str, Any]) -> Usage | None:
    """A shard's usage; None (logged) when its data is not a shard's."""
    meta = obj.get("metadata") or {}
    try:
        return Usage.decode(str((obj.get("data") or {}).get(DATA_KEY, "")))
    except ValueError as exc:
        log.warning("ConfigMap %s/%s: %s; not counted", meta.get("namespace"), meta.get("name"), exc)
        return None


class ClusterLedger(Watched, Ledger):
    """The ledger with the other shards kept by a watch and this process's shard written by ``run``."""

    def __init__(self, client: kube.Kube, namespace: str, name: str, *,
                 sync_seconds: float = DEFAULT_SYNC_SECONDS) -> None:
        Ledger.__init__(self)
        self.client = client
        self.namespace = namespace
        self.name = name
        self.sync_seconds = sync_seconds
        self._resumed = False
        self._written = 0  # the version last written (0: nothing counted, nothing to write)
        self._resource_version: str | None = None
        self._informers = [Informer(client, kube.CONFIGMAPS, namespace=namespace, label_selector=SHARD_LABEL,
                                    handler=self._on_shard)]
        self.ticks = 0  #: sync intervals run
        self.writes = 0  #: shard writes made (creates and updates)
        self.errors = 0  #: failed writes and sweeps

    def _on_shard(self, _: str, __: Obj) -> None:
        others: dict[str, Usage] = {}
        for obj in self._informers[0].items():
            name = str((obj.get("metadata") or {}).get("name", ""))
            if name == self.name:
                continue
            usage = read_shard(obj)
            if usage is not None:
                others[name] = usage
        self.others = others

    def _own_shard(self) -> Obj | None:
        return next((o for o in self._informers[0].items()
                     if (o.get("metadata") or {}).get("name") == self.name), None)

    async def run(self) -> None:
        watching = asyncio.create_task(super().run(), name="gateway-ledger-watch")
        try:
            await self._informers[0].synced.wait()
            self._take_back(time.time())
            last_sweep = 0.0
            while True:
                await asyncio.sleep(self.sync_seconds)
                now = time.time()
                await self.publish(now)
                if now - last_sweep >= SWEEP_SECONDS:
                    last_sweep = now
                    await self.sweep(now)
                self.ticks += 1
        except asyncio.CancelledError:
            # Stopping (SIGTERM, a rolling update): write what was counted since the last sync, so
            # the next replica's limits see it. Bounded: a stop never waits long on the API server.
            if self._resumed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.publish(time.time()), timeout=FLUSH_SECONDS)
            raise
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

    def _take_back(self, now: float) -> None:
        if self._resumed:
            return
        self._resumed = True
        own = self._own_shard()
        if own is None:
            return
        self._resource_version = str((own.get("metadata") or {}).get("resourceVersion") or "") or None
        stored = read_shard(own)
        if stored is not None:
            counted = self.version > 0
            self.resume(stored, now=now)
            if not counted:
                self._written = self.version  # the shard holds exactly these counts
            log.info("usage ledger: took back the counts of shard %s/%s", self.namespace, self.name)

    async def publish(self, now: float) -> None:
        """Write this process's shard if its counts changed since the last write."""
        if self.version == self._written:
            return
        version = self.version
        body = shard_object(self.name, self.namespace, self.snapshot(now),
                            resource_version=self._resource_version)
        try:
            if self._resource_version is None:
                result = await self.client.create(body)
            else:
                result = await self.client.request(
                    "PUT", kube.CONFIGMAPS.path(namespace=self.namespace, name=self.name), body=body)
        except kube.NotFound:
            self._resource_version = None  # swept or deleted by hand: created at the next sync
            return
        except kube.Conflict:
            # Created or written by someone else: another process under this name (two replicas
            # must not share a --ledger-id), or a create racing an old copy of this shard.
            self.errors += 1
            log.warning("usage ledger: shard %s/%s was written by another process; is another gateway "
                        "replica running with the same --ledger-id and port? Writing again over it",
                        self.namespace, self.name)
            self._resource_version = await self._fetch()
            return
        except (TimeoutError, kube.ApiError, OSError) as exc:
            self.errors += 1
            log.warning("usage ledger: cannot write shard %s/%s (%s); the counts stay in this process and "
                        "are written at the next sync", self.namespace, self.name, kube.one_line(exc))
            return
        self.writes += 1
        self._written = version
        self._resource_version = str((result.get("metadata") or {}).get("resourceVersion") or "") or None

    async def _fetch(self) -> str | None:
        try:
            obj = await self.client.get(kube.CONFIGMAPS, self.name, namespace=self.namespace)
        except (TimeoutError, kube.ApiError, OSError):
            return self._resource_version
        return None if obj is None else str((obj.get("metadata") or {}).get("resourceVersion") or "") or None

    async def sweep(self, now: float) -> None:
        """Delete other shards that count nothing any more: an earlier month and no token in the window."""
        month = month_of(now)
        for obj in list(self._informers[0].items()):
            meta = obj.get("metadata") or {}
            name = str(meta.get("name", ""))
            usage = read_shard(obj)
            if name == self.name or usage is None or usage.month == month:
                continue
            if usage.counts_tokens(now):
                continue
            try:
                await self.client.request(
                    "DELETE", kube.CONFIGMAPS.path(namespace=self.namespace, name=name),
                    body={"preconditions": {"resourceVersion": meta.get("resourceVersion")}})
            except (kube.NotFound, kube.Conflict):
                continue  # gone already, or written since: its owner lives
            except (TimeoutError, kube.ApiError, OSError) as exc:
                self.errors += 1
                log.warning("usage ledger: cannot delete the old shard %s/%s: %s", self.namespace, name,
                            kube.one_line(exc))
