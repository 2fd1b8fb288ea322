"""A WebSocket's message budget: WS_MESSAGES_PER_SECOND refilled, WS_MESSAGE_BURST at most, as the hub's sockets."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from ..errors import TooManyRequests
from ..settings import Settings


class Spend(enum.Enum):
    """What to do with a message: handle it, drop it (and say so once), or close the socket (1008)."""

    TAKE = "take"
    NOTIFY = "notify"
    DROP = "drop"
    CLOSE = "close"


class MessageBudget:
    """One socket's budget. Past it, the first dropped message is answered with one clear error, later ones are
    dropped silently, and a client that keeps sending a whole burst more after being told is closed."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = settings.ws_messages_per_second
        self._burst = settings.ws_message_burst
        self._clock = clock
        self._tokens = float(self._burst)
        self._at = clock()
        self._dropped = 0

    def spend(self) -> Spend:
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._dropped = 0
            return Spend.TAKE
        self._dropped += 1
        if self._dropped == 1:
            return Spend.NOTIFY
        return Spend.CLOSE if self._dropped > self._burst else Spend.DROP

    def refusal(self) -> TooManyRequests:
        """The error sent with the first dropped message."""
        retry = max(1, int((1.0 - self._tokens) / self._rate + 0.999))
        return TooManyRequests(
            f"Too many messages: at most {self._rate} per second (bursts of {self._burst}). Messages are dropped "
            "until then; keep sending and the connection is closed.",
            retryAfter=retry,
        )
