"""The Whisper deployment: a thin shell that batches chunks across jobs."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field
from ray import serve

from deployments.engine import WhisperEngine
from deployments.interface import (
    AudioError,
    Chunk,
    ChunkResult,
    Engine,
    EngineConfig,
    TranscribeOptions,
    assemble,
)
from deployments.packing import Packing

logger = logging.getLogger("ray.serve.whisper.transcriber")

# How long a caller's "more jobs are coming" hint keeps batches waiting.
BUSY_HINT_S = 1.0


class BatchConfig(BaseModel):
    """Live-tunable batching (``user_config`` in serve_config.yaml)."""

    max_batch_size: int = Field(default=32, ge=1, le=256)
    """Chunks (<= 30 s each) taken into one batch, from any jobs, before packing."""
    batch_wait_timeout_s: float = Field(default=0.02, ge=0, le=5)
    """How long a batch waits to fill once its first chunk arrived, with one job in flight."""
    batch_wait_busy_s: float = Field(default=0.5, ge=0, le=5)
    """The same wait while several jobs are in flight: fuller batches, fewer windows."""
    pack_short_jobs: bool = True
    """Lay short jobs of one owner with the same options into shared windows."""
    pack_window_s: float = Field(default=28.0, ge=5, le=30)
    """Longest packed window, in seconds (Whisper's window is 30 s)."""

    @property
    def packing(self) -> Packing:
        return Packing(enabled=self.pack_short_jobs, window_s=self.pack_window_s)


class Transcriber:
    """Takes audio bytes and options, returns a transcript or an input error.

    Each job is decoded and cut into <= 30 s chunks here; every chunk goes
    through ``_decode_batch``, so chunks of all concurrent jobs share batches.
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
        self._in_flight = 0
        self._busy_until = 0.0
        # Batched per instance: a class-level @serve.batch shares one queue (and
        # its event loop) between every instance in the process.
        defaults = BatchConfig()
        self._decode_batch: Any = serve.batch(
            max_batch_size=defaults.max_batch_size,
            batch_wait_timeout_s=defaults.batch_wait_timeout_s,
        )(self._decode_chunks)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        cfg = BatchConfig.model_validate(user_config or {})
        self.config = cfg
        self._decode_batch.set_max_batch_size(cfg.max_batch_size)
        self._tune_wait()
        self.engine.set_packing(cfg.packing)
        logger.info(
            "batching: max %d chunks, wait %.3f s (%.3f s when busy), packing %s (%g s windows)",
            cfg.max_batch_size,
            cfg.batch_wait_timeout_s,
            cfg.batch_wait_busy_s,
            "on" if cfg.pack_short_jobs else "off",
            cfg.pack_window_s,
        )

    async def transcribe(
        self, audio: bytes, options: dict[str, Any], owner: str = "", more_coming: bool = False
    ) -> dict[str, Any]:
        """Return ``{"result": transcript}`` or ``{"error": message}`` for bad input.

        Short jobs share windows only with jobs of the same ``owner`` (and
        options): one client's words never reach another's transcript.
        ``more_coming``: the caller is taking in more jobs right now, so the
        next batch should wait for them (the first job of a burst would
        otherwise be decoded alone).
        Failures that a retry could fix (a dead replica, an engine crash) raise.
        """
        self._in_flight += 1
        if more_coming:
            self._busy_until = time.monotonic() + BUSY_HINT_S
        self._tune_wait()
        try:
            opts = TranscribeOptions(**options)
            prepared = await asyncio.to_thread(self.engine.prepare, audio, opts)
            for chunk in prepared.chunks:
                chunk.pack_key = f"{owner}|{opts}"
            results = await asyncio.gather(*(self._decode_batch(c) for c in prepared.chunks))
            transcript = assemble(prepared, results)
        except (AudioError, TypeError) as exc:
            return {"error": str(exc)}
        finally:
            self._in_flight -= 1
            self._tune_wait()
        return {"result": transcript.to_dict()}

    def _tune_wait(self) -> None:
        """A lone job should not wait for company; when many are in flight, let batches fill.

        (``@serve.batch`` reads the wait when a batch's first chunk arrives.)
        """
        busy = self._in_flight > 1 or time.monotonic() < self._busy_until
        wait = self.config.batch_wait_busy_s if busy else self.config.batch_wait_timeout_s
        self._decode_batch.set_batch_wait_timeout_s(wait)

    async def _decode_chunks(self, chunks: list[Chunk]) -> list[ChunkResult]:
        logger.info("decoding a batch of %d chunks", len(chunks))
        return await asyncio.to_thread(self.engine.run_batch, chunks)


TranscriberDeployment = serve.deployment(
    name="Transcriber",
    # Large enough for batches to fill: Ray's default (5) caps a batch at 5 jobs.
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.5},
    user_config=BatchConfig().model_dump(),
)(Transcriber)
