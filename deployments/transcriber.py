"""The Whisper deployment: a thin shell that batches chunks across jobs."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import BaseModel, Field
from ray import serve
from ray.serve import metrics

from deployments.assemble import assemble
from deployments.batcher import BatchLimits, BatchStats, ChunkBatcher
from deployments.engine import WhisperEngine
from deployments.engines.contract import WINDOW_S
from deployments.interface import AudioError, Chunk, ChunkResult, Engine, EngineConfig, Packing
from deployments.protocol import (
    Decoding,
    Event,
    Finished,
    Progress,
    Queued,
    Rejected,
    TranscribeOptions,
)

logger = logging.getLogger("ray.serve.whisper.transcriber")

# How long a caller's "more jobs are coming" hint keeps batches waiting. A
# burst renews it with every job; after the burst it must lapse quickly, or
# the next batch waits for jobs that are not coming (and holds some back).
BUSY_HINT_S = 0.3


class BatchConfig(BaseModel):
    """Live-tunable batching (``user_config`` in serve_config.yaml)."""

    max_batch_size: int = Field(default=8, ge=1, le=256)
    """Windows (<= 30 s each, after packing) decoded in one pass, from any jobs.

    On a CPU 4-8 is best: a batch runs as long as its longest window, so one
    window that loops to the token limit holds up the others.
    """
    batch_wait_timeout_s: float = Field(default=0.02, ge=0, le=5)
    """How long a batch waits to fill, from its oldest chunk's arrival."""
    batch_wait_busy_s: float = Field(default=0.2, ge=0, le=5)
    """The same wait while more jobs are on their way: fuller batches, fewer windows."""
    pack_short_jobs: bool = False
    """Lay short jobs of one owner with the same options into shared windows."""
    pack_window_s: float = Field(default=28.0, ge=5, le=30)
    """Longest packed window, in seconds (Whisper's window is 30 s)."""

    @property
    def limits(self) -> BatchLimits:
        return BatchLimits(
            max_batch_size=self.max_batch_size,
            wait_s=self.batch_wait_timeout_s,
            busy_wait_s=self.batch_wait_busy_s,
            packing=Packing(enabled=self.pack_short_jobs, window_s=self.pack_window_s),
        )


class Transcriber:
    """Takes audio bytes and options; streams progress, then a transcript or an input error.

    Each job is decoded and cut into <= 30 s chunks here; every chunk goes
    through one ChunkBatcher, so chunks of all concurrent jobs share batches.
    """

    def __init__(
        self,
        config: EngineConfig,
        engine_factory: Callable[[EngineConfig], Engine] = WhisperEngine,
    ) -> None:
        if config.device == "cpu" and config.cpu_nice:
            # Decoding takes every core it is given; at a lower priority it
            # leaves room for the proxy and gateways, so new jobs keep arriving
            # (and batches keep filling) while a batch decodes.
            os.nice(config.cpu_nice)
        self.engine = engine_factory(config)
        self.config = BatchConfig()
        self._preparing = 0
        self._busy_until = 0.0
        self._batcher = ChunkBatcher(
            self._decode_chunks,
            coming=self._coming,
            on_batch=BatchMetrics().record,
            workers=self.engine.workers,
        )
        self._batcher.limits = self.config.limits

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        cfg = BatchConfig.model_validate(user_config or {})
        self.config = cfg
        self._batcher.limits = cfg.limits
        self.engine.set_packing(cfg.limits.packing)
        logger.info(
            "batching: max %d windows, wait %.3f s (%.3f s while more are coming), "
            "packing %s (%g s windows)",
            cfg.max_batch_size,
            cfg.batch_wait_timeout_s,
            cfg.batch_wait_busy_s,
            "on" if cfg.pack_short_jobs else "off",
            cfg.pack_window_s,
        )

    async def transcribe(
        self,
        audio: bytes,
        options: TranscribeOptions,
        owner: str = "",
        more_coming: bool = False,
    ) -> AsyncIterator[Event]:
        """Stream a job's events (deployments/protocol.py), ending with Finished or Rejected.

        ``Queued`` once the job waits here for a batch and ``Decoding`` once its
        first chunk is in one: the caller's attempt timeout counts decoding, not
        the wait for a batch. ``Progress`` while a long job decodes. ``Rejected``
        is for bad input only. Short jobs share windows only with jobs of the
        same ``owner`` (and options): one client's words never reach another's
        transcript. ``more_coming``: the caller is taking in more jobs right
        now, so the next batch should wait for them (the first job of a burst
        would otherwise be decoded alone). Failures that a retry could fix (a
        dead replica, an engine crash) raise. Called through a streaming handle.
        """
        if more_coming:
            self._busy_until = time.monotonic() + BUSY_HINT_S
        self._preparing += 1
        decoding: list[asyncio.Future[ChunkResult]] = []
        started = asyncio.Event()
        try:
            try:
                prepared = await asyncio.to_thread(self.engine.prepare, audio, options)
                pack_key = f"{owner}|{options.model_dump_json()}"
                for chunk in prepared.chunks:
                    chunk.pack_key = pack_key
                    chunk.owner = owner
                decoding = self._batcher.enqueue(prepared.chunks, started)
            finally:
                # In the same step as the enqueue: a batch being filled never
                # sees this job as neither coming nor queued.
                self._preparing -= 1
                self._batcher.nudge()
            pending = set(decoding)
            if len(pending) > 1:  # a long job: say what language it is in, before its end
                yield Progress(0.0, prepared.language)
            if pending:
                yield Queued()
                waiting: asyncio.Future[Any] = asyncio.ensure_future(started.wait())
                try:
                    first: set[asyncio.Future[Any]] = {waiting, *pending}
                    await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiting.cancel()
                yield Decoding()
            while pending:
                _done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if pending:  # one update per batch that ends, not per chunk
                    yield Progress(round(1 - len(pending) / len(decoding), 3))
            transcript = assemble(prepared, [f.result() for f in decoding])
        except AudioError as exc:  # bad input only: anything else raises, and is retried
            yield Rejected(str(exc))
            return
        finally:
            for future in decoding:
                future.cancel()  # the caller went away: the batcher skips them
        yield Finished(transcript)

    def _coming(self) -> bool:
        """More chunks are on their way: jobs being prepared here, or a caller's hint."""
        return self._preparing > 0 or time.monotonic() < self._busy_until

    async def _decode_chunks(self, chunks: list[Chunk]) -> list[ChunkResult]:
        # A packed clip to decode again alone goes back to the batcher (its
        # neighbours' results need not wait for it).
        return await asyncio.to_thread(self.engine.run_batch, chunks, alone_later=True)


class BatchMetrics:
    """The Whisper replica's metrics (ray.serve.metrics; exported as ray_whisper_*)."""

    def __init__(self) -> None:
        self.chunks = metrics.Histogram(
            "whisper_batch_chunks",
            description="Chunks (of any jobs) per decoded batch.",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
        )
        self.windows = metrics.Histogram(
            "whisper_batch_windows",
            description="30 s windows per decoded batch, after packing.",
            boundaries=[1, 2, 4, 8, 16, 32, 64],
        )
        self.fill = metrics.Histogram(
            "whisper_packing_fill",
            description="Audio in a batch over its windows' 30 s each (1 = no padding).",
            boundaries=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        )
        self.held_back = metrics.Counter(
            "whisper_chunks_held_back",
            description="Chunks held back for the next batch (a nearly empty packed window).",
        )

    def record(self, stats: BatchStats) -> None:
        logger.info(
            "decoding a batch of %d chunks in %d windows (%.1f s of audio; %d held back)",
            stats.chunks,
            stats.windows,
            stats.audio_s,
            stats.held_back,
        )
        self.chunks.observe(stats.chunks)
        self.windows.observe(stats.windows)
        self.fill.observe(stats.audio_s / (WINDOW_S * max(stats.windows, 1)))
        if stats.held_back:
            self.held_back.inc(stats.held_back)


TranscriberDeployment = serve.deployment(
    name="Transcriber",
    # Large enough for batches to fill: Ray's default (5) caps a batch at 5 jobs.
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.5},
    user_config=BatchConfig().model_dump(),
)(Transcriber)
