"""The ModelRoute API (``modelplane.dev/v1alpha1``): one model name in front of several backends.

A ModelRoute is the model name clients send (its ``metadata.name``) and ordered rules: the first
rule whose ``match`` fits the request (a header, the estimated prompt tokens, ``tools`` present,
``response_format``) or the rule without ``match`` (the default) decides the backends; within a
rule, weights split the traffic and the backends after the chosen one are its fallbacks. A backend
is a ModelDeployment of the namespace, another ModelRoute, or an external OpenAI-compatible
provider (base URL, API key from a Secret, its model name, its prices).

Like ``models``, these models are the single source of truth: ``crdgen`` turns them into
``crds/modelroutes.modelplane.dev.yaml`` and ``docs/api-reference-modelroute.md``; the CEL rules
declared here are run by the API server, the Python validators say the same offline. What only
the cluster can tell (a backend that does not exist, a Secret without its key, a loop through
routes) is reported by the operator as conditions in ``status`` (``controller.routes``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from modelplane.api.models import (
    API_VERSION,
    CATEGORIES,
    DNS1035_LABEL,
    OBJECTIVE_MAX_SECONDS,
    OBJECTIVE_MIN_SECONDS,
    Condition,
    Duration,
    KubeObject,
    ObjectName,
    duration_seconds,
    rules,
    to_camel,
)

ROUTE_KIND: Final = "ModelRoute"
ROUTE_PLURAL: Final = "modelroutes"
ROUTE_SINGULAR: Final = "modelroute"
ROUTE_SHORT_NAME: Final = "mr"
ROUTE_CATEGORIES = CATEGORIES

#: Most rules per route and backends per rule (bounds the CEL cost estimate, and a person's reading).
MAX_RULES = 32
MAX_BACKENDS = 8
#: Statuses that send a request on to the next backend when ``fallback.onStatus`` is not set.
DEFAULT_FALLBACK_STATUSES: tuple[int, ...] = (429, 500, 502, 503, 504)

_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
_LABEL = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1035_LABEL)]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class HeaderMatch(_Model):
    """A request header and the value it must have."""

    name: str = Field(min_length=1, max_length=256, pattern=_HEADER_NAME,
                      description="Header name, matched case-insensitively, e.g. x-modelplane-task. "
                                  "Required.")
    value: str = Field(min_length=1, max_length=1024,
                       description="The value the header must equal (exact, case-sensitive). Required.")


class ResponseFormat(StrEnum):
    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


class RuleMatch(_Model):
    """What a request must have for its rule to apply; every condition set must hold."""

    model_config = ConfigDict(json_schema_extra=rules(
        ("!has(self.minPromptTokens) || !has(self.maxPromptTokens) "
         "|| self.minPromptTokens <= self.maxPromptTokens",
         "minPromptTokens must be <= maxPromptTokens", ".minPromptTokens"),
        ("has(self.header) || has(self.minPromptTokens) || has(self.maxPromptTokens) || has(self.tools) "
         "|| has(self.responseFormat)",
         "a match needs at least one of header, minPromptTokens, maxPromptTokens, tools, responseFormat "
         "(leave match out for the default rule)")))

    header: HeaderMatch | None = Field(default=None, description="A header the request must carry. Optional.")
    min_prompt_tokens: StrictInt | None = Field(
        default=None, ge=0, le=10_000_000,
        description="The request's estimated prompt tokens (its prompt's characters / 4) must be at least "
                    "this. Optional.")
    max_prompt_tokens: StrictInt | None = Field(
        default=None, ge=0, le=10_000_000,
        description="The request's estimated prompt tokens must be at most this. Optional.")
    tools: StrictBool | None = Field(
        default=None,
        description="true: the request must have a non-empty tools list; false: it must have none. Optional.")
    response_format: ResponseFormat | None = Field(
        default=None, description="The request's response_format.type must be this. Optional.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.min_prompt_tokens is not None and self.max_prompt_tokens is not None
                and self.min_prompt_tokens > self.max_prompt_tokens):
            raise ValueError("minPromptTokens must be <= maxPromptTokens")
        if (self.header is None and self.min_prompt_tokens is None and self.max_prompt_tokens is None
                and self.tools is None and self.response_format is None):
            raise ValueError("a match needs at least one of header, minPromptTokens, maxPromptTokens, tools, "
                             "responseFormat (leave match out for the default rule)")
        return self


class SecretKeyRef(_Model):
    """A key of a Secret in the route's namespace."""

    name: ObjectName = Field(description="Name of the Secret, in the ModelRoute's namespace. Required.")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$",
                     description="The key whose value is the API key. Required.")


class ExternalBackend(_Model):
    """An OpenAI-compatible API outside the cluster: a proprietary model or a managed open-model provider."""

    name: _LABEL = Field(description="A DNS-1035 label naming this provider in metrics, usage and status, "
                                     "e.g. openai. Required.")
    base_url: str = Field(
        alias="baseURL", min_length=8, max_length=2048, pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="The API's base URL up to and including its version, e.g. https://api.openai.com/v1; the "
                    "request's path after /v1 is appended (…/chat/completions). Required.")
    model: str = Field(min_length=1, max_length=256,
                       description="The provider's model name, sent in place of the route's name. Required.")
    api_key_secret: SecretKeyRef | None = Field(
        default=None, description="Where the API key is; sent as Authorization: Bearer <key>. Optional "
                                  "(none: the request goes without one).")
    input_usd_per_million_tokens: float = Field(
        default=0, ge=0, le=10_000, description="Price of a million prompt tokens, US dollars. Default 0.")
    output_usd_per_million_tokens: float = Field(
        default=0, ge=0, le=10_000, description="Price of a million generated tokens, US dollars. Default 0.")


class RouteBackend(_Model):
    """One place a rule sends requests: exactly one of modelDeployment, modelRoute, external."""

    model_config = ConfigDict(json_schema_extra=rules(
        ("[has(self.modelDeployment), has(self.modelRoute), has(self.external)].filter(x, x).size() == 1",
         "set exactly one of modelDeployment, modelRoute, external")))

    model_deployment: ObjectName | None = Field(
        default=None, description="Name of a ModelDeployment in the route's namespace. Optional.")
    model_route: ObjectName | None = Field(
        default=None, description="Name of another ModelRoute in the namespace, whose rules then decide. "
                                  "A loop through routes is reported in the RoutesResolved condition. "
                                  "Optional.")
    external: ExternalBackend | None = Field(default=None, description="An external provider. Optional.")
    weight: StrictInt | None = Field(
        default=None, ge=0, le=100,
        description="Percent of the rule's requests sent here first. Either every backend of the rule leaves "
                    "it out (all go to the first backend; the others are its fallbacks, in order) or the "
                    "weights sum to 100 (0, or left out beside weighted ones: a fallback only). Optional.")

    @model_validator(mode="after")
    def _one(self) -> Self:
        if sum(x is not None for x in (self.model_deployment, self.model_route, self.external)) != 1:
            raise ValueError("set exactly one of modelDeployment, modelRoute, external")
        return self

    @property
    def label(self) -> str:
        """The backend's name in metrics and messages."""
        if self.external is not None:
            return f"external/{self.external.name}"
        if self.model_route is not None:
            return f"route/{self.model_route}"
        return str(self.model_deployment)


_WEIGHT_RULE = ("self.backends.all(b, !has(b.weight)) || "
                "self.backends.map(b, has(b.weight) ? b.weight : 0).sum() == 100")
_WEIGHT_MESSAGE = "the backends' weights must all be left out or sum to 100"
_CHEAPEST_WEIGHTS = ("!has(self.policy) || self.policy != 'cheapest' || self.backends.all(b, !has(b.weight))",
                     "policy cheapest orders the backends by price: leave out their weights", ".policy")
_CHEAPEST_ROUTES = ("!has(self.policy) || self.policy != 'cheapest' "
                    "|| self.backends.all(b, !has(b.modelRoute))",
                    "policy cheapest needs backends with a price (modelDeployment or external), "
                    "not modelRoute", ".policy")


class RoutePolicy(StrEnum):
    WEIGHTED = "weighted"
    CHEAPEST = "cheapest"


class RouteRule(_Model):
    """A rule: when it applies, and the backends it sends to."""

    model_config = ConfigDict(json_schema_extra=rules((_WEIGHT_RULE, _WEIGHT_MESSAGE, ".backends"),
                                                      _CHEAPEST_WEIGHTS, _CHEAPEST_ROUTES))

    name: _LABEL | None = Field(default=None,
                                description="A name for metrics and status. Default rule-<index>.")
    match: RuleMatch | None = Field(default=None,
                                    description="When the rule applies. Left out: always (the default rule).")
    policy: RoutePolicy = Field(
        default=RoutePolicy.WEIGHTED,
        description="How the first backend is chosen. weighted: by the backends' weights (none: the first "
                    "in the list). cheapest: the backends in order of the request's estimated price "
                    "(docs/model-mesh.md), the cheapest that meets spec.objective as the gateway measures "
                    "it first; ModelDeployments without a measured price after the priced ones; no "
                    "weights and no modelRoute backends. Default weighted.")
    backends: list[RouteBackend] = Field(
        min_length=1, max_length=MAX_BACKENDS,
        description=f"Where the rule sends requests (1-{MAX_BACKENDS}); one is chosen by weight (or by "
                    "price, policy cheapest), the others after it are its fallbacks. Required.")

    @model_validator(mode="after")
    def _weights(self) -> Self:
        weights = [b.weight for b in self.backends]
        if any(w is not None for w in weights) and sum(w or 0 for w in weights) != 100:
            raise ValueError(_WEIGHT_MESSAGE)
        if self.policy is RoutePolicy.CHEAPEST:
            if any(w is not None for w in weights):
                raise ValueError(_CHEAPEST_WEIGHTS[1])
            if any(b.model_route is not None for b in self.backends):
                raise ValueError(_CHEAPEST_ROUTES[1])
        return self


class RouteObjective(_Model):
    """The time to first token a route's backends should give, as the gateway measures each."""

    model_config = ConfigDict(json_schema_extra=rules(
        ("duration(self.ttft) >= duration('10ms') && duration(self.ttft) <= duration('10m')",
         "ttft must be between 10ms and 10m", ".ttft")))

    ttft: Duration = Field(
        description="Time to first token, e.g. 2s, from the gateway's sending the request to a backend to "
                    "the first generated token of its streamed answer. Required. 10ms-10m.")
    percentile: StrictFloat = Field(
        default=95, ge=50, lt=100,
        description="The percentile of a backend's recent TTFTs (the gateway's last 100 within 5 minutes) "
                    "that must be within ttft, e.g. 95. Default 95. Range [50, 100).")

    @field_validator("ttft")
    @classmethod
    def _bounds(cls, value: str) -> str:
        if not OBJECTIVE_MIN_SECONDS <= duration_seconds(value) <= OBJECTIVE_MAX_SECONDS:
            raise ValueError(f"ttft must be between 10ms and 10m, got {value}")
        return value

    @property
    def ttft_seconds(self) -> float:
        return duration_seconds(self.ttft)


class FallbackSpec(_Model):
    """When a request goes on to the next backend of its rule (at most one extra attempt)."""

    on_status: list[Annotated[StrictInt, Field(ge=400, le=599)]] = Field(
        default_factory=lambda: list(DEFAULT_FALLBACK_STATUSES), max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Statuses of the first backend that send the request on (nothing has reached the "
                    "client yet). Default [429, 500, 502, 503, 504].")
    timeout_seconds: float = Field(
        default=30, gt=0, le=3600,
        description="Seconds to wait for a backend's answer to begin before trying the next one. Default 30.")
    saturation_queue_per_replica: StrictInt | None = Field(
        default=None, ge=1, le=100_000,
        description="Skip a ModelDeployment whose requests waiting per ready replica (vLLM's queue, as the "
                    "gateway reads it) are above this. Default: never skipped for load.")
    when_cold: StrictBool = Field(
        default=True,
        description="Skip a ModelDeployment with no ready replica (scaled to zero, or starting) while a "
                    "later backend can take the request; it is still woken. Default true.")


class BudgetSpec(_Model):
    """Spend limits of the route."""

    external_usd_per_month: float | None = Field(
        default=None, ge=0, le=100_000_000,
        description="Most US dollars a month (UTC calendar month) of external backends' configured prices; "
                    "past it, external backends are skipped (a request with no other backend gets 429). "
                    "Counted across the gateway's replicas (docs/model-mesh.md, usage ledger). "
                    "Default: no limit.")


class ModelRouteSpec(_Model):
    """The rules of a ModelRoute, matched in order."""

    model_config = ConfigDict(json_schema_extra=rules(
        ("self.rules.filter(r, !has(r.match)).size() <= 1",
         "at most one rule may leave out match (the default)", ".rules")))

    rules: list[RouteRule] = Field(
        min_length=1, max_length=MAX_RULES,
        description=f"The rules (1-{MAX_RULES}), tried in order; the first that matches decides. A request "
                    "no rule matches gets 404. Required.")
    fallback: FallbackSpec = Field(default_factory=FallbackSpec, description="When to try the next backend.")
    budget: BudgetSpec | None = Field(default=None, description="Spend limits. Optional.")
    objective: RouteObjective | None = Field(
        default=None,
        description="A latency objective for rules with policy cheapest: a backend that misses it is "
                    "passed over for a dearer one that meets it. Optional (none: the cheapest first).")

    @model_validator(mode="after")
    def _one_default(self) -> Self:
        if sum(r.match is None for r in self.rules) > 1:
            raise ValueError("at most one rule may leave out match (the default)")
        return self


class RouteConditionType(StrEnum):
    RESOLVED = "RoutesResolved"


class RouteCondition(Condition):
    """One observation about the route, as in metav1.Condition."""

    type: str = Field(min_length=1, max_length=316,
                      description="Condition type. RoutesResolved: whether every backend exists and no route "
                                  "loops (the reason says which problem, the message names its field).")


class RouteSpend(BaseModel):
    """What the route's answers cost, as the gateway replicas count it since each started."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    prompt_tokens: StrictInt = Field(default=0, ge=0, description="Prompt tokens of the answers.")
    completion_tokens: StrictInt = Field(default=0, ge=0, description="Generated tokens of the answers.")
    self_hosted_usd: float = Field(
        default=0, ge=0, description="US dollars on self-hosted backends: generated tokens at each "
                                     "ModelDeployment's measured status.cost.usdPerMillionTokens.")
    external_usd: float = Field(default=0, ge=0,
                                description="US dollars on external backends, at their configured prices.")
    reference_usd: float = Field(
        default=0, ge=0, description="What the same tokens would have cost at the gateway's reference price "
                                     "(--reference-usd-per-mtok, default $15 per million).")


class ModelRouteStatus(BaseModel):
    """What the operator last found of the route's backends."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    observed_generation: StrictInt | None = Field(default=None, ge=0,
                                                  description="metadata.generation last checked.")
    backends: StrictInt | None = Field(default=None, ge=0, description="Backends named by the rules.")
    summary: str | None = Field(default=None, max_length=1024,
                                description="The rules in one line, e.g. "
                                            "'task=classification→mistral; *→cheapest:llama|external/api'.")
    spend: RouteSpend | None = Field(
        default=None,
        description="Tokens and US dollars of the route's answers, summed over the gateway replicas the "
                    "operator reads (their counters start from zero when a replica restarts; "
                    "modelplane usage and Prometheus keep the history). Absent when the operator reads "
                    "no gateway (modelplane run --gateway-selector or --gateway-metrics-url).")
    conditions: list[RouteCondition] = Field(
        default_factory=list, max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="RoutesResolved: True when every backend exists (ModelDeployments, routes, Secrets with "
                    "their keys) and no route leads back to itself; False names the first problem by its "
                    "field path (UnknownBackend, SecretKeyMissing, RouteLoop).")


class ModelRoute(KubeObject):
    """A ModelRoute object as the API server returns it."""

    api_version: Literal["modelplane.dev/v1alpha1"] = Field(default=API_VERSION)
    kind: Literal["ModelRoute"] = Field(default=ROUTE_KIND)
    spec: ModelRouteSpec
    status: ModelRouteStatus | None = None

    @property
    def generation(self) -> int | None:
        value = self.metadata.get("generation")
        return value if isinstance(value, int) else None


def rule_name(rule: RouteRule, index: int) -> str:
    return rule.name or f"rule-{index}"


def summary(spec: ModelRouteSpec) -> str:
    """The rules in one line, for the printer column."""
    parts = []
    for rule in spec.rules:
        match = rule.match
        if match is None:
            when = "*"
        else:
            bits = []
            if match.header is not None:
                bits.append(f"{match.header.name}={match.header.value}")
            if match.min_prompt_tokens is not None:
                bits.append(f"prompt>={match.min_prompt_tokens}")
            if match.max_prompt_tokens is not None:
                bits.append(f"prompt<={match.max_prompt_tokens}")
            if match.tools is not None:
                bits.append("tools" if match.tools else "no-tools")
            if match.response_format is not None:
                bits.append(match.response_format.value)
            when = ",".join(bits)
        how = "cheapest:" if rule.policy is RoutePolicy.CHEAPEST else ""
        parts.append(f"{when}→{how}{'|'.join(b.label for b in rule.backends)}")
    text = "; ".join(parts)
    return text if len(text) <= 1024 else text[:1021] + "..."
