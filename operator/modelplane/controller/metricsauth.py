"""Who may read ``/metrics``: Kubernetes authentication and authorization, as kube-rbac-proxy does.

A scraper sends its ServiceAccount token as ``Authorization: Bearer …``. The operator asks the API
server who it is (a TokenReview) and whether that user may ``get`` the non-resource URL
``/metrics`` (a SubjectAccessReview); the answer is cached for ``ttl`` seconds per token, so a scrape
every 30 s costs two small API calls a minute per scraper. No token or an unknown one: 401; a known
user without the permission: 403. Grant it with a ClusterRole such as the chart's
``<release>-metrics-reader`` (``nonResourceURLs: ["/metrics"], verbs: ["get"]``). ``/healthz`` is
never behind it (kubelet probes carry no token).

``build_*`` and ``decide`` are pure; ``MetricsAuth.check`` does the two calls.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelplane.controller import kube

TOKENREVIEWS = kube.Resource("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", namespaced=False)
SUBJECTACCESSREVIEWS = kube.Resource("authorization.k8s.io", "v1", "subjectaccessreviews",
                                     "SubjectAccessReview", namespaced=False)
#: Seconds an answer is kept per token (kube-rbac-proxy's default cache is about as long).
TTL_SECONDS = 60.0
#: Tokens remembered at once; the oldest answers are dropped beyond it.
MAX_CACHED = 256


@dataclass(frozen=True)
class Verdict:
    """The HTTP status to answer (200, 401 or 403) and why, for the body and the log."""

    status: int
    reason: str


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header; None without one."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def build_token_review(token: str) -> dict[str, Any]:
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}


def build_access_review(user: Mapping[str, Any], *, path: str, verb: str = "get") -> dict[str, Any]:
    """May this user (a TokenReview's status.user) ``verb`` the non-resource URL ``path``?"""
    spec: dict[str, Any] = {"user": user.get("username", ""), "groups": list(user.get("groups") or []),
                            "nonResourceAttributes": {"path": path, "verb": verb}}
    if user.get("uid"):
        spec["uid"] = user["uid"]
    if user.get("extra"):
        spec["extra"] = dict(user["extra"])
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def decide(token_review: Mapping[str, Any] | None, access_review: Mapping[str, Any] | None, *,
           path: str) -> Verdict:
    """The verdict from the two reviews' answers (None: not asked, as for a missing token)."""
    if token_review is None:
        return Verdict(401, f"{path} needs a bearer token (a ServiceAccount's, allowed to get {path})")
    status = token_review.get("status") or {}
    if not status.get("authenticated"):
        return Verdict(401, f"the token was not accepted: {status.get('error') or 'unknown token'}")
    user = (status.get("user") or {}).get("username", "?")
    if access_review is None:
        return Verdict(403, f"{user} was not checked")
    allowed = access_review.get("status") or {}
    if not allowed.get("allowed"):
        why = allowed.get("reason") or allowed.get("evaluationError") or "no RBAC rule allows it"
        return Verdict(403, f"{user} may not get {path}: {why}")
    return Verdict(200, f"{user} may get {path}")


class MetricsAuth:
    """Checks a request's token with the API server; answers are cached per token for ``ttl`` s."""

    def __init__(self, client: kube.Kube, *, path: str = "/metrics", ttl: float = TTL_SECONDS) -> None:
        self._client = client
        self._path = path
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Verdict]] = {}

    async def check(self, authorization: str | None, *, now: float | None = None) -> Verdict:
        token = bearer_token(authorization)
        if token is None:
            return decide(None, None, path=self._path)
        now = time.monotonic() if now is None else now
        key = hashlib.sha256(token.encode()).hexdigest()  # never keep the token itself
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        review = await self._client.request("POST", TOKENREVIEWS.path(), body=build_token_review(token))
        access = None
        if (review.get("status") or {}).get("authenticated"):
            user = (review.get("status") or {}).get("user") or {}
            access = await self._client.request("POST", SUBJECTACCESSREVIEWS.path(),
                                                body=build_access_review(user, path=self._path))
        verdict = decide(review, access, path=self._path)
        if len(self._cache) >= MAX_CACHED:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (now + self._ttl, verdict)
        return verdict
