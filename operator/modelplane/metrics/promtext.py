"""Prometheus text exposition → a frozen snapshot of counters, gauges and histogram buckets.

Pure: the caller fetches a ``/metrics`` page (with a timeout) and passes its text. The snapshot keeps
every series with its labels, so that consumers choose how to aggregate (by model, by engine, across
pods). Two snapshots of the same target taken at the start and end of a window give the window's
increase with ``delta``, which treats a counter that went down as a restart (like Prometheus's
``increase``): the end value is then the increase.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

#: Labels of one series, sorted by name so equal label sets compare equal.
Labels = tuple[tuple[str, str], ...]
#: A series: metric name (counters keep their ``_total`` suffix) and labels.
SeriesKey = tuple[str, Labels]
#: Cumulative histogram buckets, sorted by upper bound; the last one is ``+Inf``.
Buckets = tuple[tuple[float, float], ...]


class PromTextError(ValueError):
    """The text is not Prometheus exposition format."""


def labels_of(mapping: Mapping[str, str]) -> Labels:
    return tuple(sorted(mapping.items()))


def _matches(labels: Labels, selector: Mapping[str, str]) -> bool:
    have = dict(labels)
    return all(have.get(k) == v for k, v in selector.items())


@dataclass(frozen=True)
class MetricSnapshot:
    """Every counter, gauge and histogram of one scrape (or a sum/difference of scrapes)."""

    counters: Mapping[SeriesKey, float] = field(default_factory=dict)
    gauges: Mapping[SeriesKey, float] = field(default_factory=dict)
    #: Histograms by base name (``vllm:time_to_first_token_seconds``) and labels (without ``le``).
    histograms: Mapping[SeriesKey, Buckets] = field(default_factory=dict)
    taken_at: float = 0.0  #: seconds since the epoch, as the caller clocked the scrape

    def counter(self, name: str, **selector: str) -> float:
        """The sum of ``name`` over the series whose labels include ``selector`` (0 if none)."""
        return sum(v for (n, labels), v in self.counters.items() if n == name and _matches(labels, selector))

    def has_counter(self, name: str) -> bool:
        return any(n == name for n, _ in self.counters)

    def buckets(self, name: str, **selector: str) -> Buckets:
        """The buckets of histogram ``name`` summed over the matching series (empty if none)."""
        total: dict[float, float] = {}
        for (n, labels), buckets in self.histograms.items():
            if n == name and _matches(labels, selector):
                for le, count in buckets:
                    total[le] = total.get(le, 0.0) + count
        return tuple(sorted(total.items()))


def parse_snapshot(text: str, *, taken_at: float = 0.0) -> MetricSnapshot:
    """Parse exposition text; raise ``PromTextError`` when it is not Prometheus text."""
    counters: dict[SeriesKey, float] = {}
    gauges: dict[SeriesKey, float] = {}
    buckets: dict[SeriesKey, dict[float, float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_bucket") and "le" in sample.labels:
                    rest = {k: v for k, v in sample.labels.items() if k != "le"}
                    key = (sample.name[: -len("_bucket")], labels_of(rest))
                    buckets.setdefault(key, {})[float(sample.labels["le"])] = float(sample.value)
                elif sample.name.endswith("_created"):
                    continue  # creation timestamps, not values
                elif family.type == "counter" or (
                    family.type == "unknown" and sample.name.endswith("_total")
                ):
                    counters[(sample.name, labels_of(sample.labels))] = float(sample.value)
                elif family.type in ("gauge", "unknown"):
                    gauges[(sample.name, labels_of(sample.labels))] = float(sample.value)
    except (ValueError, TypeError, IndexError, KeyError) as exc:  # what the parser raises on bad text
        raise PromTextError(f"not Prometheus text: {exc}") from exc
    histograms = {key: tuple(sorted(by_le.items())) for key, by_le in buckets.items()}
    return MetricSnapshot(counters=counters, gauges=gauges, histograms=histograms, taken_at=taken_at)


def _increase(start: float | None, end: float) -> float:
    if start is None or end < start:
        return end  # new series, or the target restarted and its counter began again from zero
    return end - start


def delta(start: MetricSnapshot, end: MetricSnapshot) -> MetricSnapshot:
    """The increase of every counter and histogram from ``start`` to ``end`` of ONE target.

    Gauges are taken from ``end``. Series absent at the end are dropped. A histogram whose total
    count fell is treated as restarted as a whole, so its buckets stay consistent with each other.
    """
    counters = {k: _increase(start.counters.get(k), v) for k, v in end.counters.items()}
    histograms: dict[SeriesKey, Buckets] = {}
    for key, buckets in end.histograms.items():
        before = dict(start.histograms.get(key, ()))
        restarted = not before or (buckets and buckets[-1][1] < before.get(buckets[-1][0], 0.0))
        histograms[key] = tuple(
            (le, count if restarted else max(0.0, count - before.get(le, 0.0))) for le, count in buckets
        )
    return MetricSnapshot(counters=counters, gauges=dict(end.gauges), histograms=histograms,
                          taken_at=end.taken_at)


def merge(snapshots: Iterable[MetricSnapshot]) -> MetricSnapshot:
    """Add snapshots (e.g. the window deltas of each pod of one revision) series by series."""
    counters: dict[SeriesKey, float] = {}
    gauges: dict[SeriesKey, float] = {}
    buckets: dict[SeriesKey, dict[float, float]] = {}
    taken_at = 0.0
    for snap in snapshots:
        taken_at = max(taken_at, snap.taken_at)
        for key, value in snap.counters.items():
            counters[key] = counters.get(key, 0.0) + value
        for key, value in snap.gauges.items():
            gauges[key] = gauges.get(key, 0.0) + value
        for key, series in snap.histograms.items():
            into = buckets.setdefault(key, {})
            for le, count in series:
                into[le] = into.get(le, 0.0) + count
    histograms = {key: tuple(sorted(by_le.items())) for key, by_le in buckets.items()}
    return MetricSnapshot(counters=counters, gauges=gauges, histograms=histograms, taken_at=taken_at)


def histogram_quantile(q: float, buckets: Buckets) -> float:
    """The q-quantile of cumulative buckets, as Prometheus's ``histogram_quantile`` computes it.

    Linear interpolation inside the bucket that holds the rank; the lowest bucket starts at 0 (when
    its bound is positive); a rank in the ``+Inf`` bucket returns the highest finite bound. NaN when
    the histogram is empty or has no ``+Inf`` bucket. Counts that decrease with ``le`` (scrape races)
    are made monotone first, as Prometheus does.
    """
    if not buckets or not math.isinf(buckets[-1][0]) or not 0 <= q <= 1:
        return math.nan
    bounds = [le for le, _ in buckets]
    counts: list[float] = []
    for _, count in buckets:
        counts.append(max(count, counts[-1]) if counts else count)
    total = counts[-1]
    if total <= 0:
        return math.nan
    if len(buckets) < 2:
        return math.nan
    rank = q * total
    index = next(i for i, c in enumerate(counts) if c >= rank)
    if index == len(buckets) - 1:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    start = 0.0 if index == 0 else bounds[index - 1]
    below = 0.0 if index == 0 else counts[index - 1]
    in_bucket = counts[index] - below
    if in_bucket <= 0:
        return bounds[index]
    return start + (bounds[index] - start) * (rank - below) / in_bucket
