"""Model mesh decisions (pure): which rule of a ModelRoute a request takes, and the backends it tries.

For a request whose ``model`` names a ModelRoute:

1. **features**: its headers, its estimated prompt tokens (the prompt's characters / 4, the usual
   rule of thumb for English), whether it has ``tools``, and its ``response_format.type``;
2. **match_rule**: the first rule whose every condition holds, else the default rule (the one
   without ``match``), else none (404);
3. **candidates**: one backend by weight (``u`` in [0, 1); no weights: the first), then the rule's
   others in list order: the fallbacks; a rule with ``policy: cheapest`` takes the order of
   ``cheapest.rule_order`` instead (price, then the route's objective). A backend that is a
   ModelRoute is replaced by that route's own candidates (a route already on the path is skipped: no loop);
4. **plan**: the candidates worth trying, at most ``MAX_TRIES``: an external backend past the
   route's monthly budget is dropped; a ModelDeployment with no ready replica (``when_cold``) or
   with more requests waiting per replica than ``saturation_queue_per_replica`` is passed over
   while a later candidate can take the request, and tried last otherwise (the request then waits
   for it as any request to a cold model does);
5. **falls_back**: after an attempt, whether to try the next planned backend: a failure before
   the answer began, a timeout, or a status in ``fallback.onStatus``, and never after a byte
   reached the client.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelplane.api.route import (
    ExternalBackend,
    FallbackSpec,
    ModelRoute,
    RoutePolicy,
    RouteRule,
    rule_name,
)
from modelplane.gateway.usage import Usage

#: Attempts per request: the first backend and at most one fallback (one extra round trip).
MAX_TRIES = 2
#: Characters per token when estimating a prompt's tokens before it is tokenized.
CHARS_PER_TOKEN = 4
#: How deep routes may point at routes.
MAX_DEPTH = 4


@dataclass(frozen=True)
class Features:
    """What rules can match on."""

    headers: Mapping[str, str] = field(default_factory=dict)  #: lower-cased names
    prompt_tokens: int = 0
    tools: bool = False
    response_format: str | None = None


def _text_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_text_chars(part.get("text") if isinstance(part, dict) else part) for part in content)
    return 0


def features(doc: Mapping[str, Any], headers: Mapping[str, str]) -> Features:
    """The features of a parsed request body and its headers."""
    chars = 0
    messages = doc.get("messages")
    if isinstance(messages, list):
        chars = sum(_text_chars(m.get("content")) for m in messages if isinstance(m, dict))
    else:
        chars = _text_chars(doc.get("prompt", doc.get("input")))
    tools = doc.get("tools")
    fmt = doc.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    return Features(headers={k.lower(): v for k, v in headers.items()},
                    prompt_tokens=(chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN,
                    tools=isinstance(tools, list) and len(tools) > 0,
                    response_format=kind if isinstance(kind, str) else None)


def rule_matches(rule: RouteRule, f: Features) -> bool:
    m = rule.match
    if m is None:
        return True
    if m.header is not None and f.headers.get(m.header.name.lower()) != m.header.value:
        return False
    if m.min_prompt_tokens is not None and f.prompt_tokens < m.min_prompt_tokens:
        return False
    if m.max_prompt_tokens is not None and f.prompt_tokens > m.max_prompt_tokens:
        return False
    if m.tools is not None and f.tools != m.tools:
        return False
    return m.response_format is None or f.response_format == m.response_format.value


def match_rule(route: ModelRoute, f: Features) -> tuple[str, RouteRule] | None:
    """The first matching rule with a ``match``, else the default; with its name."""
    default: tuple[str, RouteRule] | None = None
    for i, rule in enumerate(route.spec.rules):
        if rule.match is None:
            default = default or (rule_name(rule, i), rule)
        elif rule_matches(rule, f):
            return rule_name(rule, i), rule
    return default


def weighted_first(weights: list[int | None], u: float) -> int:
    """The index chosen by weight for ``u`` in [0, 1); no weights: 0."""
    if all(w is None for w in weights):
        return 0
    point = u * sum(w or 0 for w in weights)
    total = 0.0
    for i, w in enumerate(weights):
        total += w or 0
        if w and point < total:
            return i
    return max(i for i, w in enumerate(weights) if w)  # u rounding up to the end


@dataclass(frozen=True)
class Target:
    """A leaf backend: a ModelDeployment (``model_deployment``) or an external provider."""

    route: str  #: the route whose rule named it (the innermost, for a route of routes)
    rule: str
    namespace: str
    model_deployment: str | None = None
    external: ExternalBackend | None = None

    @property
    def label(self) -> str:
        return f"external/{self.external.name}" if self.external is not None else str(self.model_deployment)


#: The order of a ``policy: cheapest`` rule's backends (indexes), given its route and the rule.
CheapestOrder = Callable[[ModelRoute, RouteRule], list[int]]


def candidates(route: ModelRoute, f: Features, routes: Mapping[tuple[str, str], ModelRoute], *,
               u: float, path: tuple[str, ...] = (), cheapest: CheapestOrder | None = None) -> list[Target]:
    """The backends for this request, first choice first, then its fallbacks; [] when no rule matches."""
    if len(path) >= MAX_DEPTH or route.name in path:
        return []
    found = match_rule(route, f)
    if found is None:
        return []
    name, rule = found
    if rule.policy is RoutePolicy.CHEAPEST and cheapest is not None:
        order = [rule.backends[i] for i in cheapest(route, rule)]
    else:
        first = weighted_first([b.weight for b in rule.backends], u)
        order = [rule.backends[first], *(b for i, b in enumerate(rule.backends) if i != first)]
    out: list[Target] = []
    for b in order:
        if b.model_route is not None:
            inner = routes.get((route.namespace, b.model_route))
            if inner is not None:
                out += candidates(inner, f, routes, u=u, path=(*path, route.name), cheapest=cheapest)
        else:
            out.append(Target(route=route.name, rule=name, namespace=route.namespace,
                              model_deployment=b.model_deployment, external=b.external))
    seen: set[Target] = set()
    return [t for t in out if not (t in seen or seen.add(t))]  # type: ignore[func-returns-value]


@dataclass(frozen=True)
class Load:
    """What the gateway knows of a ModelDeployment right now."""

    ready_replicas: int
    waiting: int = 0  #: requests waiting in its replicas' queues (vLLM's num_requests_waiting)


def skip_reason(target: Target, load: Load | None, fallback: FallbackSpec, *,
                over_budget: bool) -> str | None:
    """Why ``target`` is passed over by choice ("budget", "cold", "saturated"), or None."""
    if target.external is not None:
        return "budget" if over_budget else None
    if load is None:  # no such ModelDeployment (yet): nothing to try there
        return "missing"
    if load.ready_replicas == 0:
        return "cold" if fallback.when_cold else None
    limit = fallback.saturation_queue_per_replica
    if limit is not None and load.waiting / load.ready_replicas > limit:
        return "saturated"
    return None


@dataclass(frozen=True)
class Plan:
    tries: tuple[Target, ...]  #: at most MAX_TRIES, in order
    skipped: tuple[tuple[Target, str], ...] = ()  #: passed over by choice, and why


def plan(targets: Iterable[Target], loads: Mapping[tuple[str, str], Load], fallback: FallbackSpec, *,
         over_budget: bool) -> Plan:
    """The backends to try, in order (see the module's step 4)."""
    tries: list[Target] = []
    skipped: list[tuple[Target, str]] = []
    for target in targets:
        key = (target.namespace, target.model_deployment or "")
        load = loads.get(key) if target.external is None else None
        reason = skip_reason(target, load, fallback, over_budget=over_budget)
        if reason is None:
            tries.append(target)
        else:
            skipped.append((target, reason))
    if not tries:
        # Nothing to take it at once: the first passed-over ModelDeployment that exists waits for it.
        last = next((t for t, why in skipped if why in ("cold", "saturated")), None)
        if last is not None:
            tries.append(last)
            skipped = [(t, why) for t, why in skipped if t != last]
    elif len(tries) < MAX_TRIES:
        # One backend takes it; a passed-over ModelDeployment is still better than nothing after it fails.
        late = next((t for t, why in skipped if why in ("cold", "saturated")), None)
        if late is not None:
            tries.append(late)
    return Plan(tries=tuple(tries[:MAX_TRIES]), skipped=tuple(skipped))


def falls_back(*, status: int | None, fallback: FallbackSpec, sent_to_client: bool) -> bool:
    """Whether an attempt's outcome sends the request on: ``status`` None is a failure or timeout
    before the answer began."""
    if sent_to_client:
        return False
    return status is None or status in fallback.on_status


def rewrite_model(doc: Mapping[str, Any], model: str, *, stream_usage: bool) -> bytes:
    """The body with ``model`` replaced (and, for a stream, usage asked for, so that spend is exact)."""
    out = dict(doc)
    out["model"] = model
    if stream_usage and out.get("stream") is True:
        options = out.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        options.setdefault("include_usage", True)
        out["stream_options"] = options
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()


def usd(usage: Usage | None, input_per_m: float, output_per_m: float) -> float:
    """The price of an answer's tokens at $/million-token prices."""
    if usage is None:
        return 0.0
    return ((usage.prompt_tokens or 0) * input_per_m + (usage.completion_tokens or 0) * output_per_m) / 1e6

