"""The Kubernetes API client: the only module that talks to the API server.

A small asyncio client over aiohttp, so Kubernetes I/O never blocks kopf's event loop and every
call carries a timeout. It speaks only what modelplane needs: get, list, watch, create, delete, and
server-side apply (one field manager, ``modelplane``) on the main resource and on ``/status``.
Errors are typed (``NotFound``, ``Conflict``, ``Forbidden``, ``Invalid``) so callers can treat a
404 on delete or a 409 on create as the outcomes they are.

Credentials come from ``modelplane.controller.credentials``: a kubeconfig read by kubectl's rules
(merged ``KUBECONFIG`` lists, ``--context``, exec credential plugins) or the in-cluster
ServiceAccount, through the official kubernetes client's loader. A credential that expires is
refreshed before a request, and once more after a 401, as kubectl does.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlencode

import aiohttp
import yaml

from modelplane.controller import opmetrics

# Re-exported: callers reach the credentials through this module, as before.
from modelplane.controller.credentials import SA_DIR as SA_DIR
from modelplane.controller.credentials import ConfigError as ConfigError
from modelplane.controller.credentials import KubeConfig as KubeConfig
from modelplane.controller.credentials import auto_config as auto_config
from modelplane.controller.credentials import in_cluster_config as in_cluster_config
from modelplane.controller.credentials import load_client_cert, ssl_context
from modelplane.controller.credentials import load_kubeconfig as load_kubeconfig

Obj = dict[str, Any]

#: Default per-request timeout; a watch sets its own.
REQUEST_TIMEOUT_SECONDS = 30.0
#: Attempts for a request the server answers with 429 Too Many Requests.
MAX_ATTEMPTS = 4
FIELD_MANAGER = "modelplane"


# --- resources --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API: group, version, plural, and whether it is namespaced."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, *, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
PODS = Resource("", "v1", "pods", "Pod")
SERVICES = Resource("", "v1", "services", "Service")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
SECRETS = Resource("", "v1", "secrets", "Secret")
EVENTS = Resource("", "v1", "events", "Event")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet")
JOBS = Resource("batch", "v1", "jobs", "Job")
PDBS = Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                "CustomResourceDefinition", namespaced=False)
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role")
ROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
CLUSTERROLES = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole",
                        namespaced=False)
CLUSTERROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings",
                               "ClusterRoleBinding", namespaced=False)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
MODELDEPLOYMENTS = Resource("modelplane.dev", "v1alpha1", "modeldeployments", "ModelDeployment")
MODELROUTES = Resource("modelplane.dev", "v1alpha1", "modelroutes", "ModelRoute")
MODELADAPTERS = Resource("modelplane.dev", "v1alpha1", "modeladapters", "ModelAdapter")
#: Gateway API Inference Extension and Gateway API: their CRDs may be absent (informer ``optional``).
INFERENCEPOOLS = Resource("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool")
HTTPROUTES = Resource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")
#: LeaderWorkerSet (multi-node replicas, ``modelplane.lws``): its CRD may be absent too.
LEADERWORKERSETS = Resource("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", "LeaderWorkerSet")

_KNOWN: dict[tuple[str, str], Resource] = {
    (r.api_version, r.kind): r
    for r in (NAMESPACES, NODES, PODS, SERVICES, CONFIGMAPS, SECRETS, EVENTS, SERVICEACCOUNTS,
              DEPLOYMENTS, ENDPOINTSLICES, REPLICASETS, JOBS, PDBS, CRDS, ROLES, ROLEBINDINGS, CLUSTERROLES,
              CLUSTERROLEBINDINGS, LEASES, MODELDEPLOYMENTS, MODELROUTES, INFERENCEPOOLS, HTTPROUTES,
              LEADERWORKERSETS, MODELADAPTERS)
}


def resource_for(obj: Mapping[str, Any]) -> Resource:
    """The resource of a manifest, from its apiVersion and kind."""
    key = (str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    try:
        return _KNOWN[key]
    except KeyError:
        raise ValueError(f"modelplane's client does not know {key[1]} in {key[0]}") from None


# --- errors -----------------------------------------------------------------------------------


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str, body: Obj | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class Forbidden(ApiError):
    pass


class Unauthorized(ApiError):
    """401: the server did not accept the credentials (expired, revoked, or none)."""


class Invalid(ApiError):
    pass


_ERRORS: dict[int, type[ApiError]] = {404: NotFound, 409: Conflict, 401: Unauthorized, 403: Forbidden,
                                      422: Invalid}


#: What a call raises when the API server cannot be reached at all (refused, DNS, TLS, timeout).
UNREACHABLE = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


def one_line(exc: BaseException) -> str:
    """An exception as one line for a person: its message, whitespace folded; its type if empty."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    text = " ".join(str(exc).split())
    if not text and isinstance(exc, asyncio.TimeoutError):
        return "no answer before the timeout"
    return text or type(exc).__name__


def cli_error(exc: BaseException, *, config: KubeConfig, action: str, target: str,
              namespace: str) -> str | None:
    """The one line a CLI command prints for an ordinary failure of ``action`` ("read", "patch")
    on ``target``; None for an exception that is not one (a bug: let it show its traceback)."""
    if isinstance(exc, Unauthorized):
        return (f"the API server did not accept the credentials of {config.source or config.server}: "
                f"{one_line(exc)}")
    if isinstance(exc, NotFound):
        return f"{target} not found (kubectl get md -n {namespace} lists them)"
    if isinstance(exc, Forbidden):
        return f"not allowed to {action} {target}: {one_line(exc)}"
    if isinstance(exc, ApiError):
        return f"the API server refused to {action} {target}: {one_line(exc)}"
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, UNREACHABLE):
        return f"cannot reach the API server {config.server}: {one_line(exc)}"
    return None


# --- the client -------------------------------------------------------------------------------


def _rest(path: str) -> list[str]:
    """The part of a request path after the API group/version and the namespace, if any."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    return rest


def _resource_of(path: str) -> str:
    """The resource a request path names: /api/v1/namespaces/x/pods/y → pods."""
    rest = _rest(path)
    return rest[0] if rest else ""


def _verb(method: str, path: str) -> str:
    """get or list for a GET (by whether the path names an object), else the method."""
    if method == "GET":
        return "get" if len(_rest(path)) >= 2 else "list"
    return method.lower()


@dataclass(frozen=True)
class WatchEvent:
    type: str  #: ADDED, MODIFIED, DELETED, BOOKMARK
    object: Obj


class Kube:
    """An async Kubernetes client. Use as ``async with Kube(cfg) as kube: ...``."""

    def __init__(self, config: KubeConfig | None = None, *,
                 timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.config = config or auto_config()
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._tls: ssl.SSLContext | None = None
        self._client_files: tuple[str | None, str | None] = (None, None)
        #: Writes made through this client (create, apply, patch, delete), for tests and metrics.
        self.writes = 0

    async def __aenter__(self) -> Kube:
        try:
            tls = ssl_context(self.config)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"the TLS settings for {self.config.server} (certificate-authority, "
                              f"client-certificate or client-key) cannot be used: {one_line(exc)}") from exc
        self._tls = tls if isinstance(tls, ssl.SSLContext) else None
        self._client_files = self.config.auth.client_files() if self.config.auth else (None, None)
        connector = aiohttp.TCPConnector(ssl=tls, limit=32)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout),
            trust_env=self.config.trust_env)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _headers(self, content_type: str | None = None, *,
                       force_refresh: bool = False) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "modelplane"}
        auth = self.config.auth
        authorization = f"Bearer {self.config.token}" if self.config.token else None
        if auth is not None:
            # Exec plugins run again when their credential has expired; the ServiceAccount token
            # (projected, rotating) is re-read every minute.
            await auth.refresh(force=force_refresh)
            self._reload_client_cert(auth.client_files())
            authorization = auth.header() or authorization
        if authorization:
            headers["Authorization"] = authorization
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _reload_client_cert(self, files: tuple[str | None, str | None]) -> None:
        """A refreshed exec credential with a new client certificate: new connections present it."""
        if files == self._client_files or self._tls is None or not all(files):
            return
        cert, key = files
        try:
            with open(str(cert), "rb") as c, open(str(key), "rb") as k:
                load_client_cert(self._tls, c.read(), k.read())
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"the refreshed client certificate cannot be used: {one_line(exc)}") from exc
        self._client_files = files

    def _request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.config.tls_server_name and self._tls is not None:
            kwargs["server_hostname"] = self.config.tls_server_name
        if self.config.proxy:
            kwargs["proxy"] = self.config.proxy
        return kwargs

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Kube client used outside 'async with'")
        return self._session

    async def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json",
                      timeout: float | None = None) -> Obj:
        """One API call; raises a typed ``ApiError`` on an error status."""
        url = self.config.server + path
        if params:
            url += "?" + urlencode({k: v for k, v in params.items() if v is not None})
        data = None if body is None else (body if isinstance(body, (str, bytes))
                                          else json.dumps(body))
        kwargs = self._request_kwargs()
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        if method != "GET":
            self.writes += 1
        opmetrics.API_REQUESTS.labels(_verb(method, path), _resource_of(path)).inc()
        reauthenticated = force_refresh = False
        for attempt in range(1, MAX_ATTEMPTS + 1):
            headers = await self._headers(content_type if data is not None else None,
                                          force_refresh=force_refresh)
            force_refresh = False
            async with self.session.request(method, url, data=data, headers=headers, **kwargs) as resp:
                text = await resp.text()
                payload: Obj = {}
                if text:
                    try:
                        payload = json.loads(text)
                    except ValueError:
                        payload = {"message": text}
                if resp.status == 429 and attempt < MAX_ATTEMPTS:
                    # The server asks us to come back (priority and fairness, or a CRD's storage
                    # still initialising): wait as told, a bounded number of times.
                    delay = min(float(resp.headers.get("Retry-After", "1") or 1), 5.0)
                    await asyncio.sleep(delay)
                    continue
                if (resp.status == 401 and not reauthenticated and attempt < MAX_ATTEMPTS
                        and self.config.auth is not None and self.config.auth.refreshable):
                    # The credential was revoked or expired early: run the plugin again, once (kubectl's way).
                    reauthenticated = force_refresh = True
                    continue
                if resp.status >= 400:
                    cls = _ERRORS.get(resp.status, ApiError)
                    raise cls(resp.status, str(payload.get("reason", resp.reason)),
                              str(payload.get("message", text)), payload)
                return payload
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    # --- verbs ----------------------------------------------------------------------------

    async def get(self, resource: Resource, name: str, *, namespace: str | None = None,
                  subresource: str | None = None) -> Obj | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", resource.path(namespace=namespace, name=name,
                                                             subresource=subresource))
        except NotFound:
            return None

    async def list(self, resource: Resource, *, namespace: str | None = None,
                   label_selector: str | None = None,
                   field_selector: str | None = None) -> list[Obj]:
        result = await self.list_raw(resource, namespace=namespace, label_selector=label_selector,
                                     field_selector=field_selector)
        items = cast(list[Obj], result.get("items") or [])
        for item in items:
            # A list's items carry no apiVersion/kind of their own; callers treat them as objects.
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", resource.kind)
        return items

    async def list_raw(self, resource: Resource, *, namespace: str | None = None,
                       label_selector: str | None = None,
                       field_selector: str | None = None) -> Obj:
        return await self.request("GET", resource.path(namespace=namespace), params={
            "labelSelector": label_selector, "fieldSelector": field_selector})

    async def create(self, obj: Mapping[str, Any], *, namespace: str | None = None,
                     field_manager: str | None = None) -> Obj:
        res = resource_for(obj)
        ns = namespace or obj.get("metadata", {}).get("namespace")
        return await self.request("POST", res.path(namespace=ns), body=dict(obj),
                                  params={"fieldManager": field_manager})

    async def apply(self, obj: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER,
                    subresource: str | None = None, force: bool = True) -> Obj:
        """Server-side apply: the fields in ``obj`` become owned by ``field_manager``."""
        res = resource_for(obj)
        meta = obj.get("metadata", {})
        path = res.path(namespace=meta.get("namespace"), name=meta["name"],
                        subresource=subresource)
        return await self.request(
            "PATCH", path, body=dict(obj), content_type="application/apply-patch+yaml",
            params={"fieldManager": field_manager, "force": "true" if force else None})

    async def patch(self, resource: Resource, name: str, patch: Mapping[str, Any], *,
                    namespace: str | None = None, subresource: str | None = None,
                    field_manager: str = FIELD_MANAGER) -> Obj:
        """A JSON merge patch (for annotations and the like, never for spec of our own CR)."""
        return await self.request(
            "PATCH", resource.path(namespace=namespace, name=name, subresource=subresource),
            body=dict(patch), content_type="application/merge-patch+json",
            params={"fieldManager": field_manager})

    async def delete(self, resource: Resource, name: str, *, namespace: str | None = None,
                     propagation: str = "Background") -> bool:
        """Delete; False when it was already gone (a 404 is an outcome, not a failure)."""
        try:
            await self.request("DELETE", resource.path(namespace=namespace, name=name),
                               body={"propagationPolicy": propagation})
            return True
        except NotFound:
            return False

    async def watch(self, resource: Resource, *, namespace: str | None = None,
                    label_selector: str | None = None, field_selector: str | None = None,
                    resource_version: str | None = None,
                    timeout_seconds: int = 60) -> AsyncIterator[WatchEvent]:
        """Stream watch events until the server closes the watch after ``timeout_seconds``."""
        params = {"watch": "true", "labelSelector": label_selector,
                  "fieldSelector": field_selector, "resourceVersion": resource_version,
                  "timeoutSeconds": timeout_seconds, "allowWatchBookmarks": "true"}
        url = self.config.server + resource.path(namespace=namespace) + "?" + urlencode(
            {k: v for k, v in params.items() if v is not None})
        opmetrics.API_REQUESTS.labels("watch", resource.plural).inc()
        timeout = aiohttp.ClientTimeout(total=timeout_seconds + 10, sock_read=timeout_seconds + 10)
        async with self.session.get(url, headers=await self._headers(), timeout=timeout,
                                    **self._request_kwargs()) as resp:
            if resp.status >= 400:
                text = await resp.text()
                raise _ERRORS.get(resp.status, ApiError)(resp.status, resp.reason or "", text)
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                yield WatchEvent(type=str(event["type"]), object=event["object"])
