"""The seed's ``CircuitBreaker`` guarding the resolver: closed → open after ``failure_threshold``
failures in a row → half-open after ``recovery_timeout`` seconds (one probe) → closed on success.

Defaults are the seed's (5 failures, 30 s), the same as ``proxybus_shared::breaker``. Time comes
from an injected monotonic ``clock`` so tests move it by hand.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

LOG = logging.getLogger("cryptofeed_proxybus")


class BreakerState(enum.Enum):
    """The breaker's state."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts failures of the resolver; while open, callers go straight to the fallback."""

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self._clock = clock
        self.failure_count = 0
        self.opened_at: float | None = None
        self.opens = 0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """Closed, open, or half-open (open for ``recovery_timeout``: one probe may pass)."""
        if self.opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self.opened_at >= self.recovery_timeout:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether a call may go to the resolver now (in half-open, only one probe at a time)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def on_success(self) -> None:
        """A call succeeded: close."""
        if self.opened_at is not None:
            LOG.info("proxybus resolver breaker closed")
        self.failure_count = 0
        self.opened_at = None
        self._probing = False

    def on_failure(self) -> None:
        """A call failed: open after ``failure_threshold`` in a row, or again after a failed probe."""
        self.failure_count += 1
        probe_failed = self._probing
        self._probing = False
        if probe_failed or (self.opened_at is None and self.failure_count >= self.failure_threshold):
            self.opened_at = self._clock()
            self.opens += 1
            LOG.warning(
                "proxybus resolver breaker open after %d failures; fallback for %.0f s",
                self.failure_count,
                self.recovery_timeout,
            )
