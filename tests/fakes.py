"""A fake engine for fast tests: no model, predictable output, real batching around it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from deployments.audio import SpeechLayout
from deployments.interface import (
    AudioError,
    Chunk,
    ChunkResult,
    EngineConfig,
    Packing,
    PreparedAudio,
)
from deployments.protocol import End, Event, Segment, TranscribeOptions, Word
from deployments.transcriber import Transcriber
from serve_app.transcriber_client import ProgressFn, StageFn, follow


class FakeEngine:
    """Audio ``b"FAKE <label> <n>"`` becomes n chunks that decode to "<label> part <i>".

    Any other bytes become one chunk. ``b"BAD"`` is refused as input; ``b"CRASH"``
    fails the way a broken engine would.
    """

    workers = 1

    def __init__(self, _config: EngineConfig | None = None) -> None:
        self.batches: list[int] = []

    def set_packing(self, packing: Packing) -> None:
        self.packing = packing

    def prepare(self, audio: bytes, options: TranscribeOptions) -> PreparedAudio:
        if audio.startswith(b"BAD"):
            raise AudioError("could not decode the audio: fake")
        if audio.startswith(b"CRASH"):
            raise RuntimeError("engine crashed")
        label, count = "audio", 1
        if audio.startswith(b"FAKE "):
            _, label, n = audio.decode().split()
            count = int(n)
        windows = [(30.0 * i, 30.0) for i in range(count)]
        chunks = [
            Chunk(
                audio=np.zeros(16, dtype=np.float32),
                offset=offset,
                duration=duration,
                prompt=[ord(c) for c in f"{label} part {i}"],
                language="en",
                task=options.task,
                beam_size=options.beam_size,
                word_timestamps=options.word_timestamps,
            )
            for i, (offset, duration) in enumerate(windows)
        ]
        layout = SpeechLayout(duration=30.0 * count, speech=[], windows=windows)
        return PreparedAudio(chunks=chunks, layout=layout, language="en")

    def run_batch(self, chunks: Sequence[Chunk], *, alone_later: bool = False) -> list[ChunkResult]:
        self.batches.append(len(chunks))
        return [
            ChunkResult(
                segments=[
                    Segment(
                        id=0,
                        start=c.offset,
                        end=c.offset + c.duration,
                        text=" " + "".join(chr(x) for x in c.prompt),
                        words=[
                            Word(
                                word=" fake",
                                start=c.offset,
                                end=c.offset + c.duration,
                                probability=0.9,
                            )
                        ]
                        if c.word_timestamps
                        else None,
                    )
                ]
            )
            for c in chunks
        ]


def fake_transcriber() -> Transcriber:
    return Transcriber(EngineConfig(), engine_factory=FakeEngine)


class LocalClient:
    """The gateway's view of a Transcriber, without Ray."""

    def __init__(self, transcriber: Transcriber | None = None) -> None:
        self.transcriber = transcriber or fake_transcriber()
        self.calls = 0

    async def transcribe(
        self,
        audio: bytes,
        options: TranscribeOptions,
        owner: str = "",
        more_coming: bool = False,
        on_progress: ProgressFn | None = None,
        on_stage: StageFn | None = None,
    ) -> End:
        self.calls += 1
        events = self.transcriber.transcribe(audio, options, owner, more_coming)
        return await follow(events, on_progress, on_stage)


async def final(events: AsyncIterator[Event]) -> End:
    """A Transcriber's last event (its result or error), progress skipped."""
    return await follow(events, None)


def long_job_client(chunks: int, seconds_per_batch: float) -> LocalClient:
    """Every job becomes ``chunks`` chunks, decoded one per batch, each batch that slow."""

    class Slow(FakeEngine):
        def run_batch(
            self, batch: Sequence[Chunk], *, alone_later: bool = False
        ) -> list[ChunkResult]:
            time.sleep(seconds_per_batch)
            return super().run_batch(batch)

    class LongJobs(LocalClient):
        async def transcribe(self, audio: bytes, *args: Any, **kw: Any) -> End:
            return await super().transcribe(f"FAKE long {chunks}".encode(), *args, **kw)

    transcriber = Transcriber(EngineConfig(), engine_factory=Slow)
    transcriber.reconfigure({"max_batch_size": 1})
    return LongJobs(transcriber)
