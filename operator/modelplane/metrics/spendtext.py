"""The gateways' spend counters (``gateway/spend.py``) read back from their text (pure).

``from_exposition`` sums the ``modelplane_gateway_spend_*`` samples of one or more /metrics pages by
(team, model, backend); ``from_prometheus`` does the same with Prometheus' answers to
``prometheus_queries``. ``modelplane usage`` prints them; the operator writes a route's share into
its status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Row = tuple[str, str, str]  #: (team, model, backend)

_TOKENS = "modelplane_gateway_spend_tokens_total"
_USD = "modelplane_gateway_spend_usd_total"
_REFERENCE = "modelplane_gateway_spend_reference_usd_total"


@dataclass
class Spend:
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    self_hosted_usd: float = 0.0
    external_usd: float = 0.0
    reference_usd: float = 0.0

    def add(self, metric: str, kind: str, value: float) -> None:
        if metric == _TOKENS:
            if kind == "prompt":
                self.prompt_tokens += value
            elif kind == "completion":
                self.completion_tokens += value
        elif metric == _USD:
            if kind == "self_hosted":
                self.self_hosted_usd += value
            elif kind == "external":
                self.external_usd += value
        elif metric == _REFERENCE:
            self.reference_usd += value

    def plus(self, other: Spend) -> Spend:
        return Spend(*(a + b for a, b in zip(self.values(), other.values(), strict=True)))

    def minus(self, other: Spend) -> Spend:
        return Spend(*(max(0.0, a - b) for a, b in zip(self.values(), other.values(), strict=True)))

    def values(self) -> tuple[float, ...]:
        return (self.prompt_tokens, self.completion_tokens, self.self_hosted_usd, self.external_usd,
                self.reference_usd)


@dataclass
class Report:
    rows: dict[Row, Spend] = field(default_factory=dict)

    def add(self, row: Row, metric: str, kind: str, value: float) -> None:
        self.rows.setdefault(row, Spend()).add(metric, kind, value)

    def minus(self, earlier: Report) -> Report:
        return Report({k: v.minus(earlier.rows.get(k, Spend())) for k, v in self.rows.items()})


def from_exposition(texts: Iterable[str]) -> Report:
    """The spend counters of one or more /metrics texts, summed."""
    report = Report()
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (_TOKENS, _USD, _REFERENCE):
                    labels = sample.labels
                    report.add((labels.get("team", ""), labels.get("model", ""), labels.get("backend", "")),
                               sample.name, labels.get("kind", ""), float(sample.value))
    return report


def prometheus_queries(window: str) -> dict[str, str]:
    """The PromQL of each counter over ``window`` (a Prometheus duration such as 30d)."""
    return {name: f"sum by (team, model, backend, kind) (increase({name}[{window}]))"
            for name in (_TOKENS, _USD, _REFERENCE)}


def from_prometheus(answers: Mapping[str, Any]) -> Report:
    """Prometheus' vector answers to ``prometheus_queries``, by metric name."""
    report = Report()
    for name, answer in answers.items():
        for item in ((answer or {}).get("data") or {}).get("result") or []:
            labels = item.get("metric") or {}
            report.add((labels.get("team", ""), labels.get("model", ""), labels.get("backend", "")), name,
                       labels.get("kind", ""), float(item["value"][1]))
    return report


def by_model(report: Report) -> dict[str, Spend]:
    """The spend of each model (what clients sent: a route's name), over teams and backends."""
    out: dict[str, Spend] = {}
    for (_, model, _), spend in report.rows.items():
        out[model] = out.get(model, Spend()).plus(spend)
    return out
