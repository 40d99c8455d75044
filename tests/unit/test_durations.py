"""One duration grammar everywhere: what the API server accepts, every reader reads."""

from __future__ import annotations

import re

import pytest

from modelplane import durations
from modelplane.api.models import duration_seconds
from modelplane.autoscaler.policy import parse_duration as policy_duration
from modelplane_dev.devcluster.cluster import parse_duration_ms

CASES = [("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("500ms", 0.5),
         ("1m30s", 90.0), ("0s", 0.0), ("2h0m5s", 7205.0)]


@pytest.mark.parametrize(("text", "seconds"), CASES, ids=[c[0] for c in CASES])
def test_every_reader_agrees_with_the_crd_pattern(text: str, seconds: float) -> None:
    assert re.fullmatch(durations.DURATION_PATTERN, text)
    assert durations.seconds(text) == pytest.approx(seconds)
    assert duration_seconds(text) == pytest.approx(seconds)
    assert policy_duration(text) == pytest.approx(seconds)
    assert parse_duration_ms(text) == round(seconds * 1000)


@pytest.mark.parametrize("text", ["", "5 minutes", "1d", "-3s", "m", "5x", "1h-2m"])
def test_what_the_crd_refuses_every_reader_refuses(text: str) -> None:
    assert not re.fullmatch(durations.DURATION_PATTERN, text)
    with pytest.raises(ValueError, match="duration"):
        durations.seconds(text)
