"""Housekeeping: end overdue jobs, apply JOB_RETENTION_HOURS, remove audio no job needs."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from serve_app.metrics import JobMetrics
from serve_app.settings import Settings
from serve_app.store import JobStore

logger = logging.getLogger("ray.serve.whisper.housekeeper")

# Spooled files no job refers to are removed once this old (an upload in
# progress has no job row yet).
ORPHAN_AGE_S = 600


class Housekeeper:
    def __init__(self, store: JobStore, settings: Settings, metrics: JobMetrics) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics

    async def run(self) -> None:
        """End overdue jobs, delete expired ones, remove audio no job needs."""
        for path in await asyncio.to_thread(self.store.expire_overdue):
            self.metrics.job_finished(
                error_code="deadline_exceeded", latency_s=None, audio_s=None, run_s=None
            )
            if path:
                Path(path).unlink(missing_ok=True)
        hours = self.settings.job_retention_hours
        if hours is not None:
            purged = await asyncio.to_thread(
                self.store.purge_finished, older_than=time.time() - hours * 3600
            )
            if purged:
                logger.info("retention: deleted %d finished jobs", purged)
        await asyncio.to_thread(self._remove_orphan_audio)

    def _remove_orphan_audio(self) -> None:
        folder = self.settings.upload_dir
        if not folder.is_dir():
            return
        needed = self.store.audio_paths()
        cutoff = time.time() - ORPHAN_AGE_S
        for path in folder.iterdir():
            try:
                if str(path) not in needed and path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
            except OSError:
                continue
