"""Durations as the API writes them: ``30s``, ``5m``, ``1h30m``, ``1.5h``, ``500ms``.

One grammar for every part that reads one (the CRD's pattern, the autoscaler's windows, the
rollout's pauses, the dev cluster's delays), so that what the API server accepts the operator
can read. Callers decide what a bare number or an empty value means to them.
"""

from __future__ import annotations

import re

#: The CRD's pattern for duration strings (also used in its OpenAPI schema).
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")


def seconds(text: str) -> float:
    """Seconds in a duration string; ValueError (naming the value) for anything else."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h30m, 500ms)")
    return sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(text))
