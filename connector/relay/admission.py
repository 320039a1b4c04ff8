"""Admission: a worker lets in new sockets at the rate it can serve them and sheds the excess
with close 1013 (contract v1.1 §17), a retry hint in the reason, instead of letting a storm
of handshakes queue until the clients' own timeouts fire.

After a deploy or a crash, thousands of terminals come back to a worker at once. Each new
socket costs control-path work (a registration, an attach, a claim: database and Redis
round trips); a worker that takes them all at once answers none of them in time, and the
terminals retry into an even longer queue. Here a worker counts the control operations in
flight (`pending`: sockets between their handshake and the end of their connect handler,
and device-listeners until their registration is answered) and how many it finished over
the last few seconds (`rate`). A new socket is admitted while `pending` stays under

    max(ADMISSION_MIN_PENDING, rate × ADMISSION_MAX_WAIT)

so that one admitted now is served within about ADMISSION_MAX_WAIT seconds; past it, a new
listener socket (device-listener, pos-listener: where work enters) is accepted and closed
at once with 1013 and the reason
`try again later; retry_after=<seconds>`: a turn in a schedule kept at the measured rate,
each shed socket the next slot, so that a wave of refused terminals comes back about as fast
as the worker can take it (the clients add a fraction of a second: docs/protocol.md).
A shed socket costs its handshake and nothing else: no database, no Redis.

Per process and in memory: each worker judges its own load.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from connector.conf import connector_settings

WINDOW = 5.0  # seconds over which the completion rate is measured
SLOT = 0.25  # seconds per bucket of the window
MAX_RETRY_AFTER = 30  # seconds, the longest hint a shed socket is given
SHED_CODE = 1013  # try again later (contract v1.1 §17)
REASON = "try again later; retry_after={}"


@dataclass
class Admission:
    """One process's gate. `enter()` answers whether a new socket may come in; every socket
    admitted `leave()`s once when its control work is done (a device-listener once its
    registration is answered)."""

    clock: Callable[[], float] = time.monotonic
    pending: int = 0
    shed_total: int = 0
    _done: deque = field(default_factory=deque)  # (bucket start, count), oldest first
    _first_done: float | None = None
    _next_slot: float = 0.0  # when the last shed client was told to come back
    draw: Callable[[int, int], int] = random.randint
    _shed: deque = field(default_factory=deque)

    def rate(self) -> float:
        """Control operations finished per second over the last WINDOW seconds, or since the
        first one if that is more recent: a worker just started (after a restart, the moment
        its whole fleet comes back) is judged by what it does, not by a window it has not
        lived through yet."""
        self._forget(self._done)
        if not self._done:
            return 0.0
        lived = self.clock() - self._first_done if self._first_done is not None else WINDOW
        return sum(count for _, count in self._done) / max(1.0, min(WINDOW, lived))

    def limit(self) -> int:
        settings = connector_settings
        return max(settings.ADMISSION_MIN_PENDING, int(self.rate() * settings.ADMISSION_MAX_WAIT))

    def enter(self, *, sheddable: bool = True) -> bool:
        """Admit one more control operation (True), or refuse it (False: shed the socket).
        One that is not `sheddable` (it completes work admitted already) is always admitted,
        and counted."""
        if connector_settings.ADMISSION_MIN_PENDING <= 0 or not sheddable:
            self.pending += 1
            return True
        if self.pending >= self.limit():
            self.shed_total += 1
            self._count(self._shed)
            return False
        self.pending += 1
        return True

    def leave(self) -> None:
        self.pending = max(0, self.pending - 1)
        if self._first_done is None:
            self._first_done = self.clock()
        self._count(self._done)

    def retry_after(self) -> int:
        """Seconds a shed client should wait: its turn in a schedule kept at the rate this
        process finishes work (at least the rate the minimum admits: a process that just
        started has finished nothing yet). Each shed socket takes the next slot after the
        work pending and the slots handed out already, so the refused terminals come back
        about as fast as the process can take them, each once, instead of all together or
        into another refusal. At least 1 s, at most MAX_RETRY_AFTER."""
        now = self.clock()
        settings = connector_settings
        floor = settings.ADMISSION_MIN_PENDING / max(settings.ADMISSION_MAX_WAIT, 0.001)
        rate = max(self.rate(), floor, 1.0)
        self._next_slot = max(self._next_slot, now + self.pending / rate) + 1.0 / rate
        wait = self._next_slot - now
        if wait > MAX_RETRY_AFTER:
            # More refused than the longest hint covers at this rate: the schedule stops
            # growing, and these are spread over the hint's second half instead of all being
            # told the longest hint and coming back in the same second.
            self._next_slot = now + MAX_RETRY_AFTER
            return self.draw(MAX_RETRY_AFTER // 2, MAX_RETRY_AFTER)
        return max(1, math.ceil(wait))

    def reason(self) -> str:
        return REASON.format(self.retry_after())

    def _count(self, buckets: deque) -> None:
        now = self.clock()
        start = now - (now % SLOT)
        if buckets and buckets[-1][0] == start:
            buckets[-1] = (start, buckets[-1][1] + 1)
        else:
            buckets.append((start, 1))
        self._forget(buckets)

    def _forget(self, buckets: deque) -> None:
        horizon = self.clock() - WINDOW
        while buckets and buckets[0][0] + SLOT <= horizon:
            buckets.popleft()


admission = Admission()
