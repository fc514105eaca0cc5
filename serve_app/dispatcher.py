"""Job lifecycle: claim a job, send it to the Whisper deployment, record the end."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from serve_app.jobs import Job, JobStore

logger = logging.getLogger("ray.serve.whisper.dispatcher")


class TranscriberClient(Protocol):
    """How the gateway reaches the Whisper deployment (a handle, or a local object in tests)."""

    async def transcribe(self, audio: bytes, options: dict[str, Any]) -> dict[str, Any]: ...


class HandleClient:
    """A Ray Serve DeploymentHandle to the Transcriber; audio goes by value."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def transcribe(self, audio: bytes, options: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = await self._handle.transcribe.remote(audio, options)
        return reply


class Dispatcher:
    """Runs jobs from the store; the store, not this object, is the queue.

    ``submit`` starts a fresh job at once; ``sweep`` (looped by ``run``) takes
    queued jobs and jobs whose lease ran out, so a job survives the gateway or
    replica that held it.
    """

    def __init__(
        self,
        store: JobStore,
        client: TranscriberClient,
        *,
        lease_s: float = 60,
        max_attempts: int = 3,
        max_in_flight: int = 64,
        sweep_interval_s: float = 2.0,
    ) -> None:
        self.store = store
        self.client = client
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.max_in_flight = max_in_flight
        self.sweep_interval_s = sweep_interval_s
        self._running: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Cancel running jobs and hand them back to the queue for another gateway."""
        if self._loop_task is not None:
            self._loop_task.cancel()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def submit(self, job_id: str) -> None:
        """Start a job just accepted, if there is room; else the sweep takes it."""
        if len(self._running) < self.max_in_flight:
            self._spawn(job_id, self._claim_and_run(job_id))

    async def sweep(self) -> int:
        """Start as many waiting jobs as there is room for; return how many."""
        started = 0
        while len(self._running) < self.max_in_flight:
            job = await asyncio.to_thread(self.store.claim, lease_s=self.lease_s)
            if job is None:
                break
            self._spawn(job.id, self._run(job))
            started += 1
        return started

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                logger.exception("job sweep failed; retrying")
            await asyncio.sleep(self.sweep_interval_s)

    def _spawn(self, job_id: str, coro: Any) -> None:
        if job_id in self._running:
            coro.close()
            return
        task = asyncio.create_task(coro)
        self._running[job_id] = task
        task.add_done_callback(lambda _t: self._running.pop(job_id, None))

    async def _claim_and_run(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.store.claim, lease_s=self.lease_s, job_id=job_id)
        if job is not None:
            await self._run(job)

    async def _run(self, job: Job) -> None:
        begin = time.monotonic()
        heartbeat = asyncio.create_task(self._heartbeat(job))
        try:
            try:
                audio = await asyncio.to_thread(Path(job.audio_path or "").read_bytes)
            except OSError:
                await self._finish(job, error="the uploaded audio is gone", code="audio_missing")
                return
            try:
                reply = await self.client.transcribe(audio, job.options)
            except asyncio.CancelledError:
                await asyncio.to_thread(self.store.release, job.id, attempt=job.attempts)
                raise
            except Exception as exc:
                await self._failed_attempt(job, exc)
                return
        finally:
            heartbeat.cancel()
        if "error" in reply:
            await self._finish(job, error=str(reply["error"]), code="invalid_audio")
        else:
            await self._finish(job, result=reply["result"])
        logger.info(
            "job %s ended after %.2f s (attempt %d, %.1f s of audio)",
            job.id,
            time.monotonic() - begin,
            job.attempts,
            job.duration or 0.0,
        )

    async def _failed_attempt(self, job: Job, exc: Exception) -> None:
        # Only the type: an exception's text may quote what it was given.
        kind = type(exc).__name__
        logger.warning("job %s attempt %d failed: %s", job.id, job.attempts, kind)
        if job.attempts >= self.max_attempts:
            await self._finish(
                job,
                error=f"transcription failed {job.attempts} times ({kind}); "
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
    ) -> None:
        ended = await asyncio.to_thread(
            self.store.finish,
            job.id,
            attempt=job.attempts,
            result=result,
            error=error,
            error_code=code,
        )
        if ended is not None and job.audio_path:
            Path(job.audio_path).unlink(missing_ok=True)

    async def _heartbeat(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            held = await asyncio.to_thread(
                self.store.renew, job.id, attempt=job.attempts, lease_s=self.lease_s
            )
            if not held:
                return
