"""The gateway's periodic work while the app runs, and its clean stop."""

from __future__ import annotations

import asyncio
import logging
import time

from serve_app.ends import EndWatcher
from serve_app.housekeeper import Housekeeper
from serve_app.metrics import JobMetrics
from serve_app.runner import JobRunner
from serve_app.store import JobStatus, JobStore
from serve_app.webhooks import Sender

logger = logging.getLogger("ray.serve.whisper.background")


class Background:
    """Every ``sweep_interval_s``: take waiting jobs (the runner's sweep), start the
    webhook deliveries that are due, set the queue-depth gauge; every
    ``housekeeping_interval_s``, housekeeping. ``stop`` hands running jobs back."""

    def __init__(
        self,
        *,
        store: JobStore,
        runner: JobRunner,
        ends: EndWatcher,
        housekeeper: Housekeeper,
        webhooks: Sender,
        metrics: JobMetrics,
        sweep_interval_s: float = 2.0,
        housekeeping_interval_s: float = 30.0,
    ) -> None:
        self.store = store
        self.runner = runner
        self.ends = ends
        self.housekeeper = housekeeper
        self.webhooks = webhooks
        self.metrics = metrics
        self.sweep_interval_s = sweep_interval_s
        self.housekeeping_interval_s = housekeeping_interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.ends.stop()
        await self.runner.stop()
        await self.webhooks.stop()

    async def _loop(self) -> None:
        last_housekeeping = 0.0
        while True:
            try:
                if time.monotonic() - last_housekeeping >= self.housekeeping_interval_s:
                    last_housekeeping = time.monotonic()
                    await self.housekeeper.run()
                await self.runner.sweep()
                await self.webhooks.deliver_due()
                counts = await asyncio.to_thread(self.store.count_by_status)
                self.metrics.queue(counts[JobStatus.queued], counts[JobStatus.processing])
            except Exception:
                logger.exception("job sweep failed; retrying")
            await asyncio.sleep(self.sweep_interval_s)
