"""Watch-fed caches of Kubernetes objects (informers): LIST once, then WATCH from its resourceVersion.

The controller reads the cluster from these caches, never with a LIST in its periodic path: one
informer per kind keeps every object the operator cares about, indexed by the ModelDeployment it
belongs to, and tells the controller which object changed. At steady state an informer costs one
long-lived watch request per ``watch_seconds`` and no other API call.

What it does on trouble, so that no outage ends it:

- the server closes the watch (its timeout): watch again from the last resourceVersion seen;
- ``410 Gone`` (the resourceVersion is older than etcd keeps) or a watch ERROR event: LIST again,
  and report every object that changed, appeared or vanished meanwhile;
- any other error (connection refused or reset while kube-apiserver restarts, a timeout, a 5xx,
  a 403 while RBAC is being granted): log it once per outage, wait with bounded exponential
  backoff (``Backoff``), then LIST again. It never gives up; ``down_for`` tells /healthz how long
  it has been without a working watch.
- ``404 Not Found`` on an ``optional`` informer's LIST or WATCH: the API server does not serve the
  kind (its CRD is not installed, or was removed). That is a state, not an outage: the cache is
  emptied, ``served`` turns False, it is logged once, and the informer lists again every
  ``absent_retry_seconds`` to notice the CRD being installed.

Cached objects drop ``metadata.managedFields``, which nothing here reads and which is often the
largest part of an object.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from modelplane.controller import kube

log = logging.getLogger("modelplane.informer")

Obj = dict[str, Any]
ObjKey = tuple[str, str]  #: (namespace or "", name)
#: Called with the event type (ADDED, MODIFIED, DELETED), the object as now cached (for DELETED:
#: the last one cached) — after the cache has been updated.
Handler = Callable[[str, Obj], None]


@dataclass
class Backoff:
    """Bounded exponential backoff with jitter: ``first`` doubling up to ``cap`` seconds."""

    first: float = 0.2
    cap: float = 5.0
    failures: int = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.first * (2.0 ** min(self.failures, 30)))
        self.failures += 1
        # Full jitter on the upper half, so that informers that failed together do not retry
        # together against a server that just came back.
        return delay / 2 + random.random() * delay / 2  # noqa: S311 — timing jitter, not security

    def reset(self) -> None:
        self.failures = 0


def object_key(obj: Obj) -> ObjKey:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _trim(obj: Obj, resource: kube.Resource) -> Obj:
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    # Watch events carry apiVersion/kind; list items do not.
    obj.setdefault("apiVersion", resource.api_version)
    obj.setdefault("kind", resource.kind)
    return obj


class Informer:
    """A LIST+WATCH cache of one kind, in one namespace or all, optionally filtered by selectors.

    ``index`` maps an object to the keys it is filed under (e.g. the ModelDeployment it belongs
    to); ``by_index`` returns the objects filed under a key. ``handler`` hears of every change.
    """

    def __init__(self, client: kube.Kube, resource: kube.Resource, *, namespace: str | None = None,
                 label_selector: str | None = None, field_selector: str | None = None,
                 index: Callable[[Obj], Iterable[Any]] | None = None,
                 handler: Handler | None = None, watch_seconds: int = 290,
                 backoff: Backoff | None = None, optional: bool = False,
                 absent_retry_seconds: float = 30.0,
                 on_served_change: Callable[[], None] | None = None) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self._index_fn = index
        self._handler = handler
        self.watch_seconds = watch_seconds
        self.backoff = backoff or Backoff()
        self.store: dict[ObjKey, Obj] = {}
        self._index: dict[Any, set[ObjKey]] = {}
        self._filed: dict[ObjKey, tuple[Any, ...]] = {}
        self.synced = asyncio.Event()
        #: monotonic time since when this informer has had no working LIST/WATCH; None: working.
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.lists = 0  #: LIST requests made (the initial one, and one after each outage or 410)
        self.watches = 0  #: WATCH requests made
        #: A kind whose CRD may be missing (see the module doc); ``on_served_change`` hears when
        #: ``served`` changes.
        self.optional = optional
        self.absent_retry_seconds = absent_retry_seconds
        self._on_served_change = on_served_change
        self.absent = False

    @property
    def name(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.resource.plural}{where}"

    @property
    def served(self) -> bool | None:
        """Whether the API server serves the kind: None until the first LIST answered."""
        if not self.synced.is_set():
            return None
        return not self.absent

    def down_for(self, now: float | None = None) -> float:
        """Seconds without a working watch (0 while it works)."""
        if self.down_since is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.down_since

    # --- reading ----------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Obj | None:
        return self.store.get((namespace, name))

    def items(self) -> list[Obj]:
        return list(self.store.values())

    def by_index(self, key: Any) -> list[Obj]:
        return [self.store[k] for k in sorted(self._index.get(key, ()))]

    # --- the cache --------------------------------------------------------------------------

    def _file(self, key: ObjKey, obj: Obj | None) -> None:
        for old in self._filed.pop(key, ()):
            members = self._index.get(old)
            if members is not None:
                members.discard(key)
                if not members:
                    del self._index[old]
        if obj is None or self._index_fn is None:
            return
        keys = tuple(self._index_fn(obj))
        self._filed[key] = keys
        for k in keys:
            self._index.setdefault(k, set()).add(key)

    def _put(self, event_type: str, obj: Obj) -> None:
        key = object_key(obj)
        if event_type == "DELETED":
            gone = self.store.pop(key, None)
            self._file(key, None)
            if gone is not None:
                self._notify("DELETED", gone)
            return
        old = self.store.get(key)
        self.store[key] = obj
        self._file(key, obj)
        if old is None:
            self._notify("ADDED", obj)
        elif _rv(old) != _rv(obj):
            self._notify("MODIFIED", obj)

    def _replace(self, items: list[Obj]) -> None:
        """A fresh LIST: apply it as the changes since what the cache holds."""
        fresh = {object_key(o): o for o in items}
        for key in [k for k in self.store if k not in fresh]:
            self._put("DELETED", self.store[key])
        for obj in fresh.values():
            self._put("ADDED", obj)

    def _notify(self, event_type: str, obj: Obj) -> None:
        if self._handler is None:
            return
        try:
            self._handler(event_type, obj)
        except Exception:  # a handler's bug must not end the informer
            log.exception("handler of %s failed on %s %s", self.name, event_type, object_key(obj))

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """LIST, then WATCH from there; forever, through any outage. Cancel to stop."""
        while True:
            try:
                rv = await self._list()
                await self._watch_from(rv)
            except asyncio.CancelledError:
                raise
            except (kube.ApiError, aiohttp.ClientError, TimeoutError, OSError, ValueError,
                    KeyError, _Relist) as exc:
                if isinstance(exc, _Relist) or (isinstance(exc, kube.ApiError) and exc.status == 410):
                    continue  # 410 Gone or a watch ERROR: LIST again at once
                if self.optional and isinstance(exc, kube.NotFound):
                    self._absent()
                    await asyncio.sleep(self.absent_retry_seconds)
                    continue
                self._failed(exc)
                await asyncio.sleep(self.backoff.next_delay())

    async def _list(self) -> str:
        self.lists += 1
        listed = await self.client.list_raw(self.resource, namespace=self.namespace,
                                            label_selector=self.label_selector,
                                            field_selector=self.field_selector)
        items = [_trim(o, self.resource) for o in listed.get("items") or []]
        self._replace(items)
        self._working()
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch_from(self, rv: str) -> None:
        while True:
            self.watches += 1
            async for event in self.client.watch(
                    self.resource, namespace=self.namespace, label_selector=self.label_selector,
                    field_selector=self.field_selector, resource_version=rv or None,
                    timeout_seconds=self.watch_seconds):
                if event.type == "ERROR":
                    status = event.object
                    log.info("watch of %s: %s (code %s); listing again", self.name,
                             status.get("message"), status.get("code"))
                    raise _Relist()
                new_rv = str((event.object.get("metadata") or {}).get("resourceVersion") or "")
                if event.type != "BOOKMARK":
                    self._put(event.type, _trim(event.object, self.resource))
                rv = new_rv or rv
            self._working()  # the server ended the watch at its timeout: watch again from rv

    def _absent(self) -> None:
        """The kind is not served (see the module doc); the cache empties as if each object went."""
        was = self.served
        if not self.absent:
            log.info("the API server does not serve %s (%s/%s): its CRD is not installed; looking again "
                     "every %.0f s", self.name, self.resource.group, self.resource.version,
                     self.absent_retry_seconds)
        self.absent = True
        self._replace([])
        self.down_since = None
        self.last_error = None
        self.backoff.reset()
        self.synced.set()
        if was is not False:
            self._served_changed()

    def _served_changed(self) -> None:
        if self._on_served_change is None:
            return
        try:
            self._on_served_change()
        except Exception:  # a callback's bug must not end the informer
            log.exception("served-change callback of %s failed", self.name)

    def _working(self) -> None:
        changed = self.served is not True
        if self.absent:
            log.info("the API server serves %s now", self.name)
            self.absent = False
        if self.down_since is not None:
            log.info("watch of %s works again after %.1f s", self.name, self.down_for())
        self.down_since = None
        self.last_error = None
        self.backoff.reset()
        self.synced.set()
        if changed:
            self._served_changed()

    def _failed(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("watch of %s failed (%s); retrying with backoff", self.name, message)
        elif message != self.last_error:
            log.info("watch of %s still failing: %s", self.name, message)
        self.last_error = message


class _Relist(Exception):
    """The watch cannot continue from its resourceVersion: LIST again."""


def _rv(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
