"""Long polls: requests that wait for a job to end, here or in another gateway replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from serve_app.store import JobStore

logger = logging.getLogger("ray.serve.whisper.ends")

# While requests wait for jobs, how often to look for commits by other
# processes (another gateway replica may end the job).
WATCH_INTERVAL_S = 0.05


class EndWatcher:
    """Wakes waiting requests when their job ends.

    Ends in this gateway are signalled directly (``wake``); ends by other
    gateway replicas are seen through the store's change counter, watched
    only while anyone waits.
    """

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._look_again = False

    async def wait(self, job_id: str, timeout: float) -> None:
        """Return soon after the job ends here or in another process, or after ``timeout``.

        The caller re-reads the job.
        """
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        # The caller read the job before this: an end committed since then may
        # already be counted in the version the watcher last saw, so look once.
        self._look_again = True
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.create_task(self._watch())
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            waiting = self._waiters.get(job_id, set())
            waiting.discard(event)
            if not waiting:
                self._waiters.pop(job_id, None)

    def wake(self, *job_ids: str) -> None:
        """These jobs ended (or were deleted) here."""
        for job_id in job_ids:
            for event in self._waiters.get(job_id, ()):
                event.set()

    def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()

    async def _watch(self) -> None:
        seen = -1
        while self._waiters:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                version = await asyncio.to_thread(self.store.data_version)
                if version != seen or self._look_again:
                    seen, self._look_again = version, False
                    ended = await asyncio.to_thread(self.store.ended_among, list(self._waiters))
                    self.wake(*ended)
            except Exception:
                logger.exception("watching for ended jobs failed; retrying")
