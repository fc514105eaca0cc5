"""Running jobs: claim one from the store, send it to the Whisper deployment, record its end.

The store, not this object, is the queue: ``submit`` starts a job just accepted,
``sweep`` takes queued jobs and jobs whose lease ran out, so a job survives the
gateway or replica that held it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from deployments.protocol import End, Queued, Rejected, Stage, TranscribeOptions
from serve_app.ends import EndWatcher
from serve_app.errors import describe
from serve_app.metrics import JobMetrics
from serve_app.settings import Settings
from serve_app.store import Job, JobStore
from serve_app.transcriber_client import TranscriberClient
from serve_app.webhooks import Sender

logger = logging.getLogger("ray.serve.whisper.runner")


class JobRunner:
    """The jobs this gateway runs, at most ``max_in_flight`` at once."""

    def __init__(
        self,
        store: JobStore,
        client: TranscriberClient,
        settings: Settings,
        *,
        metrics: JobMetrics,
        ends: EndWatcher,
        webhooks: Sender,
        max_in_flight: int = 64,
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.ends = ends
        self.webhooks = webhooks
        self.max_in_flight = max_in_flight
        self._running: dict[str, asyncio.Task[None]] = {}
        self._receiving = 0
        self._uploads_by_owner: collections.Counter[str] = collections.Counter()
        # Jobs started here (just accepted, or claimed by the sweep) and not yet
        # handed to the Transcriber.
        self._starting: set[str] = set()

    async def stop(self) -> None:
        """Cancel running jobs and hand them back to the queue for another gateway."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @contextlib.contextmanager
    def receiving(self, owner: str) -> Iterator[None]:
        """Mark an upload in progress: the Transcriber is told more jobs are coming."""
        self._receiving += 1
        self._uploads_by_owner[owner] += 1
        try:
            yield
        finally:
            self._receiving -= 1
            self._uploads_by_owner[owner] -= 1
            if not self._uploads_by_owner[owner]:
                del self._uploads_by_owner[owner]

    def uploads_in_progress(self, owner: str) -> int:
        return self._uploads_by_owner[owner]

    def submit(self, job_id: str) -> None:
        """Start a job just accepted, if there is room; else the sweep takes it."""
        self.metrics.job_submitted()
        if len(self._running) < self.max_in_flight and job_id not in self._running:
            self._spawn(job_id, self._claim_and_run(job_id))

    def cancel(self, job_id: str) -> None:
        """Stop waiting for a job this gateway runs (it was deleted)."""
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
        self.ends.wake(job_id)

    async def sweep(self) -> int:
        """Start as many waiting jobs as there is room for; return how many."""
        started = 0
        while len(self._running) < self.max_in_flight:
            job = await asyncio.to_thread(self.store.claim, lease_s=self.settings.lease_seconds)
            if job is None:
                break
            self._spawn(job.id, self._run(job))
            started += 1
        return started

    def _spawn(self, job_id: str, coro: Any) -> None:
        # The sweep may claim a job whose fast-path task has not claimed it yet:
        # the claim decides who runs it (the other finds nothing to claim), so
        # the newer task takes the slot and must not be dropped.
        task = asyncio.create_task(coro)
        self._running[job_id] = task
        self._starting.add(job_id)

        def _done(t: asyncio.Task[None]) -> None:
            if self._running.get(job_id) is t:
                del self._running[job_id]
                self._starting.discard(job_id)

        task.add_done_callback(_done)

    async def _claim_and_run(self, job_id: str) -> None:
        job = await asyncio.to_thread(
            self.store.claim, lease_s=self.settings.lease_seconds, job_id=job_id
        )
        if job is not None:
            await self._run(job)

    async def _run(self, job: Job) -> None:
        begin = time.monotonic()
        heartbeat = asyncio.create_task(self._heartbeat(job))
        try:
            audio = await asyncio.to_thread(self._audio, job)
            if audio is None:
                await self._finish(job, error="the uploaded audio is gone", code="audio_missing")
                return
            # More jobs are on their way to the Transcriber: uploads in progress
            # here, or other jobs started here and not yet sent (not jobs it has).
            self._starting.discard(job.id)
            more_coming = self._receiving > 0 or bool(self._starting)
            try:
                options = TranscribeOptions.model_validate(job.options)
            except ValidationError as exc:  # a record made by another version
                await self._finish(
                    job,
                    error=f"invalid options: {describe(exc.errors(), 'options')}",
                    code="invalid_audio",
                )
                return
            try:
                reply = await self._attempt(job, audio, options, more_coming)
            except asyncio.CancelledError:
                await asyncio.to_thread(self.store.release, job.id, attempt=job.attempts)
                raise
            except Exception as exc:
                await self._failed_attempt(job, exc)
                return
        finally:
            heartbeat.cancel()
        run_s = time.monotonic() - begin
        if isinstance(reply, Rejected):
            await self._finish(job, error=reply.reason, code="invalid_audio")
        else:
            await self._finish(job, result=reply.transcript.stored(), run_s=run_s)
        logger.info(
            "job %s ended after %.2f s (attempt %d, %.1f s of audio)",
            job.id,
            time.monotonic() - begin,
            job.attempts,
            job.duration or 0.0,
        )

    def _audio(self, job: Job) -> bytes | None:
        """The job's spooled file, or, on another node than the one that took the job in,
        the copy its store keeps (PostgreSQL)."""
        if job.audio_path:
            with contextlib.suppress(OSError):
                return Path(job.audio_path).read_bytes()
        return self.store.audio(job.id)

    async def _attempt(
        self, job: Job, audio: bytes, options: TranscribeOptions, more_coming: bool
    ) -> End:
        """One try at the Transcriber. It may take ATTEMPT_TIMEOUT (base + per audio second)
        to decode, counted from when the job's first chunk is in a batch; while the job
        waits there for a batch (under a burst of 200 jobs, two minutes), up to
        QUEUE_TIMEOUT_S (the job's deadline still bounds it all). Raises TimeoutError."""
        loop = asyncio.get_running_loop()
        decode_s = self.settings.attempt_timeout(job.duration)
        deadline = loop.time() + decode_s

        def on_stage(stage: Stage) -> None:
            nonlocal deadline
            waiting = isinstance(stage, Queued)
            deadline = loop.time() + (self.settings.queue_timeout_s if waiting else decode_s)

        call = asyncio.ensure_future(
            self.client.transcribe(
                audio,
                options,
                job.owner,
                more_coming,
                on_progress=functools.partial(self._progress, job),
                on_stage=on_stage,
            )
        )
        try:
            while not call.done():
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                await asyncio.wait({call}, timeout=left)
            return call.result()
        finally:
            call.cancel()

    async def _failed_attempt(self, job: Job, exc: Exception) -> None:
        # Only the type: an exception's text may quote what it was given.
        kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        logger.warning("job %s attempt %d failed: %s", job.id, job.attempts, kind)
        if job.attempts >= self.settings.max_attempts:
            await self._finish(
                job,
                error=f"transcription failed {job.attempts} times (last: {kind}); "
                "the server logs have details under this job id",
                code="transcription_failed",
            )
        else:
            await asyncio.to_thread(self.store.release, job.id, attempt=job.attempts)

    async def _finish(
        self,
        job: Job,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        code: str | None = None,
        run_s: float | None = None,
    ) -> None:
        ended = await asyncio.to_thread(
            self.store.finish,
            job.id,
            attempt=job.attempts,
            result=result,
            error=error,
            error_code=code,
        )
        if ended is not None:
            if job.audio_path:
                Path(job.audio_path).unlink(missing_ok=True)
            self.metrics.job_finished(
                error_code=code if error is not None else None,
                latency_s=(ended.finished_at or 0.0) - ended.created_at,
                audio_s=ended.duration or (result or {}).get("duration"),
                run_s=run_s,
            )
            if ended.callback_url:
                self.webhooks.deliver_soon(job.id)
        self.ends.wake(job.id)

    async def _progress(self, job: Job, progress: float, language: str | None) -> None:
        await asyncio.to_thread(
            self.store.set_progress,
            job.id,
            attempt=job.attempts,
            progress=progress,
            language=language,
        )

    async def _heartbeat(self, job: Job) -> None:
        lease = self.settings.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            held = await asyncio.to_thread(
                self.store.renew, job.id, attempt=job.attempts, lease_s=lease
            )
            if not held:
                return
