"""Job lifecycle: claim a job, send it to the Whisper deployment, record the end."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from serve_app import webhooks
from serve_app.jobs import Job, JobStatus, JobStore
from serve_app.metrics import JobMetrics
from serve_app.settings import Settings

logger = logging.getLogger("ray.serve.whisper.dispatcher")

# Spooled files no job refers to are removed once this old (an upload in
# progress has no job row yet).
ORPHAN_AGE_S = 600
# While requests wait for jobs, how often to look for commits by other
# processes (another gateway replica may end the job).
WATCH_INTERVAL_S = 0.05


ProgressFn = Callable[[float, str | None], Awaitable[None]]
"""Called with the share decoded and, once known, the audio's language."""

STAGES = ("queued", "decoding")
"""A Transcriber's stage events: the job waits there for a batch; its first chunk is in one."""
StageFn = Callable[[str], None]


class TranscriberClient(Protocol):
    """How the gateway reaches the Whisper deployment (a handle, or a local object in tests)."""

    async def transcribe(
        self,
        audio: bytes,
        options: dict[str, Any],
        owner: str,
        more_coming: bool,
        on_progress: ProgressFn | None = None,
        on_stage: StageFn | None = None,
    ) -> dict[str, Any]: ...


async def follow(
    events: AsyncIterator[dict[str, Any]],
    on_progress: ProgressFn | None,
    on_stage: StageFn | None = None,
) -> dict[str, Any]:
    """Pass a Transcriber's progress and stage events on; return its last (result or error)."""
    async for event in events:
        stage = next((s for s in STAGES if event.get(s)), None)
        if stage is not None:
            if on_stage is not None:
                on_stage(stage)
            continue
        if "progress" not in event:
            return event
        if on_progress is not None:
            await on_progress(float(event["progress"]), event.get("language"))
    raise RuntimeError("the Transcriber ended its stream without a result")


class HandleClient:
    """A Ray Serve DeploymentHandle to the Transcriber (streaming); audio goes by value."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle.options(stream=True)

    async def transcribe(
        self,
        audio: bytes,
        options: dict[str, Any],
        owner: str,
        more_coming: bool,
        on_progress: ProgressFn | None = None,
        on_stage: StageFn | None = None,
    ) -> dict[str, Any]:
        events = self._handle.transcribe.remote(audio, options, owner, more_coming)
        return await follow(events, on_progress, on_stage)


class Dispatcher:
    """Runs jobs from the store; the store, not this object, is the queue.

    ``submit`` starts a fresh job at once; the loop (``run``) takes queued jobs
    and jobs whose lease ran out, so a job survives the gateway or replica that
    held it. The loop also ends overdue jobs, applies JOB_RETENTION_HOURS and
    removes spooled audio no job needs.
    """

    def __init__(
        self,
        store: JobStore,
        client: TranscriberClient,
        settings: Settings,
        *,
        max_in_flight: int = 64,
        sweep_interval_s: float = 2.0,
        housekeeping_interval_s: float = 30.0,
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.max_in_flight = max_in_flight
        self.sweep_interval_s = sweep_interval_s
        self.housekeeping_interval_s = housekeeping_interval_s
        self._running: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._receiving = 0
        self._uploads_by_owner: collections.Counter[str] = collections.Counter()
        self._last_read: dict[str, float] = {}
        """When each unfinished job's status may next be read without a wait (pacing)."""
        self._read_budget: dict[str, tuple[float, float]] = {}
        """Per owner: (tokens, when) of the status-read token bucket."""
        # Jobs started here (just accepted, or claimed by the sweep) and not yet
        # handed to the Transcriber.
        self._starting: set[str] = set()
        # Requests waiting for a job to end (long polls), by job id.
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._look_again = False
        self.metrics = JobMetrics()
        self.webhooks = webhooks.Sender(store, settings, self.metrics)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Cancel running jobs and hand them back to the queue for another gateway."""
        for background in (self._loop_task, self._watch_task):
            if background is not None:
                background.cancel()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.webhooks.stop()

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
        self._wake({job_id})

    def read_allowed(self, owner: str) -> bool:
        """A token bucket per owner: STATUS_READS_PER_S_PER_KEY reads a second, bursts of
        twice that. False: this read is one too many (the caller answers 429)."""
        rate = self.settings.status_reads_per_s_per_key
        now = time.monotonic()
        tokens, then = self._read_budget.get(owner, (2 * rate, now))
        tokens = min(2 * rate, tokens + (now - then) * rate)
        if len(self._read_budget) > 10_000:
            self._read_budget.clear()
        if tokens < 1:
            self._read_budget[owner] = (tokens, now)
            return False
        self._read_budget[owner] = (tokens - 1, now)
        return True

    def pace(self, job_id: str) -> float:
        """Seconds to hold a status read of an unfinished job polled without ``wait``.

        The seed's clients poll several times a second, and each read costs about 11 ms
        of CPU in Ray's proxy and a gateway (measured: 32 such clients halved throughput).
        A read within STATUS_POLL_INTERVAL_S of the last one waits for the rest of it, or
        for the job's end: the client learns the end as soon as with a faster poll.
        """
        interval = self.settings.status_poll_interval_s
        if interval <= 0:
            return 0.0
        now = time.monotonic()
        if len(self._last_read) > 10_000:  # jobs long ended; their reads are not held
            self._last_read = {k: t for k, t in self._last_read.items() if t > now}
        due = max(now, self._last_read.get(job_id, now - interval) + interval)
        self._last_read[job_id] = due
        return min(due - now, interval)

    async def wait_job_end(self, job_id: str, timeout: float) -> None:
        """Return soon after the job ends here or in another process, or after ``timeout``.

        The caller re-reads the job. Ends by other gateway replicas are seen
        through the database's change counter, watched while anyone waits.
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

    def _wake(self, job_ids: set[str]) -> None:
        for job_id in job_ids:
            for event in self._waiters.get(job_id, ()):
                event.set()

    async def _watch(self) -> None:
        seen = -1
        while self._waiters:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                version = await asyncio.to_thread(self.store.data_version)
                if version != seen or self._look_again:
                    seen, self._look_again = version, False
                    ended = await asyncio.to_thread(self.store.ended_among, list(self._waiters))
                    self._wake(ended)
            except Exception:
                logger.exception("watching for ended jobs failed; retrying")

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

    async def housekeeping(self) -> None:
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

    async def _loop(self) -> None:
        last_housekeeping = 0.0
        while True:
            try:
                if time.monotonic() - last_housekeeping >= self.housekeeping_interval_s:
                    last_housekeeping = time.monotonic()
                    await self.housekeeping()
                await self.sweep()
                await self.webhooks.deliver_due()
                counts = await asyncio.to_thread(self.store.count_by_status)
                self.metrics.queue(counts[JobStatus.queued], counts[JobStatus.processing])
            except Exception:
                logger.exception("job sweep failed; retrying")
            await asyncio.sleep(self.sweep_interval_s)

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
            try:
                audio = await asyncio.to_thread(Path(job.audio_path or "").read_bytes)
            except OSError:
                await self._finish(job, error="the uploaded audio is gone", code="audio_missing")
                return
            # More jobs are on their way to the Transcriber: uploads in progress
            # here, or other jobs started here and not yet sent (not jobs it has).
            self._starting.discard(job.id)
            more_coming = self._receiving > 0 or bool(self._starting)
            try:
                reply = await self._attempt(job, audio, more_coming)
            except asyncio.CancelledError:
                await asyncio.to_thread(self.store.release, job.id, attempt=job.attempts)
                raise
            except Exception as exc:
                await self._failed_attempt(job, exc)
                return
        finally:
            heartbeat.cancel()
        run_s = time.monotonic() - begin
        if "error" in reply:
            await self._finish(job, error=str(reply["error"]), code="invalid_audio")
        else:
            await self._finish(job, result=reply["result"], run_s=run_s)
        logger.info(
            "job %s ended after %.2f s (attempt %d, %.1f s of audio)",
            job.id,
            time.monotonic() - begin,
            job.attempts,
            job.duration or 0.0,
        )

    async def _attempt(self, job: Job, audio: bytes, more_coming: bool) -> dict[str, Any]:
        """One try at the Transcriber. It may take ATTEMPT_TIMEOUT (base + per audio second)
        to decode, counted from when the job's first chunk is in a batch; while the job
        waits there for a batch (under a burst of 200 jobs, two minutes), up to
        QUEUE_TIMEOUT_S (the job's deadline still bounds it all). Raises TimeoutError."""
        loop = asyncio.get_running_loop()
        decode_s = self.settings.attempt_timeout(job.duration)
        deadline = loop.time() + decode_s

        def on_stage(stage: str) -> None:
            nonlocal deadline
            waiting = stage == "queued"
            deadline = loop.time() + (self.settings.queue_timeout_s if waiting else decode_s)

        call = asyncio.ensure_future(
            self.client.transcribe(
                audio,
                job.options,
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
        self._wake({job.id})

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
