"""docs/troubleshooting.md covers every reason the operator can put in a condition or an Event.

Each reason enum of the operator (reconcile, replica health, planner, autoscaler, rollout) is read
here, so a new reason without an entry (what it means, what to do) fails this test.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import pytest

from modelplane.api.models import ConditionType
from modelplane.autoscaler import policy
from modelplane.controller import health, reconcile
from modelplane.planner.plan import PlanReason
from modelplane.rollout import machine

REPO = Path(__file__).resolve().parents[2]
TROUBLESHOOTING = (REPO / "docs" / "troubleshooting.md").read_text()

ENUMS: list[type[StrEnum]] = [reconcile.Reason, health.Reason, PlanReason, policy.Reason, machine.Reason]
REASONS = sorted({(e.__module__.rsplit(".", 1)[-1], r.value) for e in ENUMS for r in e})


@pytest.mark.parametrize(("module", "reason"), REASONS, ids=[f"{m}.{r}" for m, r in REASONS])
def test_every_reason_has_a_troubleshooting_entry(module: str, reason: str) -> None:
    assert f"| `{reason}` |" in TROUBLESHOOTING or f"`{reason}` (" in TROUBLESHOOTING, (
        f"{module}.{reason} is not in docs/troubleshooting.md")


@pytest.mark.parametrize("condition_type", list(ConditionType), ids=[t.value for t in ConditionType])
def test_every_condition_type_has_a_troubleshooting_entry(condition_type: ConditionType) -> None:
    assert f"| `{condition_type.value}` |" in TROUBLESHOOTING
