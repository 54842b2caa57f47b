"""Retry policies for steps."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from durable_core.errors import ConfigError

__all__ = ["RetryPolicy", "DEFAULT_RETRY", "NO_RETRY"]

# gRPC status codes worth another attempt; all others fail the step at once.
RETRYABLE_GRPC_CODES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNKNOWN"}
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing step is tried again.

    The n-th retry waits ``initial_interval * backoff_coefficient ** (n - 1)``, capped at
    ``maximum_interval``, then spread by ``± jitter`` (a fraction). A step raising
    TerminalError, or an error whose class name is in ``non_retryable_errors``, fails at once.

    Attributes:
        initial_interval: wait before the first retry.
        backoff_coefficient: growth of the wait per retry (>= 1).
        maximum_interval: the longest wait.
        maximum_attempts: attempts in all, the first included (0 = unlimited).
        jitter: random spread of each wait, 0..1.
        non_retryable_errors: error class names (or gRPC code names) that fail at once.
    """

    initial_interval: timedelta = timedelta(milliseconds=200)
    backoff_coefficient: float = 2.0
    maximum_interval: timedelta = timedelta(seconds=10)
    maximum_attempts: int = 10
    jitter: float = 0.1
    non_retryable_errors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.backoff_coefficient < 1:
            raise ConfigError("backoff_coefficient must be >= 1")
        if self.maximum_attempts < 0:
            raise ConfigError("maximum_attempts must be >= 0 (0 = unlimited)")
        if not 0 <= self.jitter <= 1:
            raise ConfigError("jitter must be between 0 and 1")
        if self.initial_interval <= timedelta(0):
            raise ConfigError("initial_interval must be positive")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = self.initial_interval.total_seconds() * self.backoff_coefficient ** (attempt - 1)
        base = min(base, self.maximum_interval.total_seconds())
        if self.jitter:
            base *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(base, 0.0)

    def allows_another(self, attempt: int) -> bool:
        """Whether attempt number ``attempt`` may be followed by another."""
        return self.maximum_attempts == 0 or attempt < self.maximum_attempts


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(maximum_attempts=1)
