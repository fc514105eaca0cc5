"""What status reads cost a client that polls: held to a pace, and bounded per key."""

from __future__ import annotations

import math
import time

from serve_app.settings import Settings

# Past this many owners, the token buckets start again.
MAX_TRACKED = 10_000


class StatusPacer:
    """Pacing of status reads without ``wait`` and a per-key rate limit on all of them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._read_budget: dict[str, tuple[float, float]] = {}
        """Per owner: (tokens, when) of the status-read token bucket."""

    def read_allowed(self, owner: str) -> bool:
        """A token bucket per owner: STATUS_READS_PER_S_PER_KEY reads a second, bursts of
        twice that. False: this read is one too many (the caller answers 429)."""
        rate = self.settings.status_reads_per_s_per_key
        now = time.monotonic()
        tokens, then = self._read_budget.get(owner, (2 * rate, now))
        tokens = min(2 * rate, tokens + (now - then) * rate)
        if len(self._read_budget) > MAX_TRACKED:
            self._read_budget.clear()
        if tokens < 1:
            self._read_budget[owner] = (tokens, now)
            return False
        self._read_budget[owner] = (tokens - 1, now)
        return True

    def hold(self, created_at: float) -> float:
        """Seconds to hold a status read of an unfinished job polled without ``wait``.

        The seed's clients poll several times a second, and each read costs CPU
        in Ray's proxy and a gateway (docs/benchmarks.md: 32 such clients halved
        throughput). A read waits for the job's next tick, every
        STATUS_POLL_INTERVAL_S from its creation (``created_at``, ``time.time()``),
        or for its end, whichever comes first: the client learns the end as soon
        as with a faster poll, and a job is answered at most once a tick. The
        ticks are the job's own, so every gateway replica holds a read to the
        same ones: Ray's proxy spreads a client's polls over them.
        """
        interval = self.settings.status_poll_interval_s
        if interval <= 0:
            return 0.0
        age = max(0.0, time.time() - created_at)
        return interval - age % interval

    def retry_after(self, created_at: float) -> int:
        """Whole seconds after which to read the job again: to just before its next tick.

        A read answered at a tick that said STATUS_POLL_INTERVAL_S came back just after
        the next tick and was held to the one after: a client following Retry-After saw
        its job every two intervals. Coming back before the tick, the read is held to it.
        """
        return max(1, math.ceil(self.hold(created_at)) - 1)
