"""The activator: requests for a ModelDeployment with no ready replica wait here, bounded.

A held request sleeps until the routing table changes (an endpoint turned ready, or the
ModelDeployment went away), then tries again; it is held at most ``timeout`` seconds from when it
was first held, then answered 503 with ``Retry-After``. At most ``max_per_model`` requests are held
per ModelDeployment in this process; one more is answered 429 with ``Retry-After`` at once.

A held request is one handler waiting in memory: when it is released it is sent exactly once (the
proxy's single retry before the first byte aside), and if the client goes away while it waits it
is simply dropped. ``modelplane_gateway_held_requests`` counts them per ModelDeployment, so the
operator can scale from zero on it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from modelplane.gateway import metrics
from modelplane.gateway.errors import ErrorKind, GatewayError

Key = tuple[str, str]


@dataclass(frozen=True)
class HoldLimits:
    max_per_model: int = 1000  #: requests held per ModelDeployment (per gateway process)
    timeout_seconds: float = 300.0  #: longest a request is held
    retry_after_seconds: int = 5  #: the Retry-After of 429 and 503 answers

    def __post_init__(self) -> None:
        if self.max_per_model < 0 or self.timeout_seconds < 0 or self.retry_after_seconds < 0:
            raise ValueError("hold limits must be >= 0")


class Holds:
    """The held requests of one gateway process, counted per ModelDeployment."""

    def __init__(self, limits: HoldLimits) -> None:
        self.limits = limits
        self.held: Counter[Key] = Counter()

    def total(self) -> int:
        return sum(self.held.values())

    def acquire(self, key: Key) -> None:
        """Count one more request held for ``key``; 429 when it already holds ``max_per_model``."""
        if self.held[key] >= self.limits.max_per_model:
            raise GatewayError(
                ErrorKind.OVERLOADED,
                f"{key[0]}/{key[1]} has no ready replica and already holds {self.held[key]} requests "
                f"(the gateway's --max-held); retry later",
                retry_after=self.limits.retry_after_seconds)
        self.held[key] += 1
        metrics.HELD.labels(*key).set(self.held[key])

    def release(self, key: Key) -> None:
        """One request held for ``key`` is no longer (sent on, failed, or its client left)."""
        self.held[key] -= 1
        metrics.HELD.labels(*key).set(max(0, self.held[key]))
        if self.held[key] <= 0:
            del self.held[key]

    def expired(self, key: Key, waited: float) -> GatewayError:
        """The 503 of a request held ``waited`` seconds without a replica getting ready."""
        return GatewayError(
            ErrorKind.NO_READY_REPLICA,
            f"{key[0]}/{key[1]} has no ready replica after {waited:.0f} s (the gateway's "
            f"--hold-timeout); it may be scaling from zero: retry later",
            retry_after=self.limits.retry_after_seconds)
