"""The Transcriber's batching across jobs, with a fake engine (no Ray cluster)."""

from __future__ import annotations

import asyncio

from deployments.protocol import (
    Decoding,
    End,
    Event,
    Finished,
    Progress,
    Queued,
    Rejected,
    TranscribeOptions,
)
from tests.fakes import FakeEngine, fake_transcriber, final

NONE = TranscribeOptions()
"""A job with no options set."""


def test_chunks_of_concurrent_jobs_share_batches() -> None:
    transcriber = fake_transcriber()
    transcriber.reconfigure({"max_batch_size": 8})

    async def run() -> list[End]:
        return await asyncio.gather(
            *(final(transcriber.transcribe(f"FAKE job{j} 3".encode(), NONE)) for j in range(10))
        )

    replies = asyncio.run(run())
    engine = transcriber.engine
    assert isinstance(engine, FakeEngine)
    assert sum(engine.batches) == 30
    # 30 chunks in batches of at most 8: batching across jobs, not one per call.
    assert max(engine.batches) == 8
    assert len(engine.batches) <= 6
    for j, reply in enumerate(replies):
        assert isinstance(reply, Finished)
        result = reply.transcript
        assert result.text == f"job{j} part 0 job{j} part 1 job{j} part 2"
        assert [s.start for s in result.segments] == [0.0, 30.0, 60.0]


def test_bad_input_fails_only_its_own_job() -> None:
    transcriber = fake_transcriber()

    async def run() -> list[End]:
        return await asyncio.gather(
            final(transcriber.transcribe(b"FAKE good 2", NONE)),
            final(transcriber.transcribe(b"BAD", NONE)),
            final(transcriber.transcribe(b"FAKE fine 1", NONE)),
        )

    good, bad, fine = asyncio.run(run())
    assert isinstance(good, Finished) and isinstance(fine, Finished)
    assert good.transcript.text == "good part 0 good part 1"
    assert isinstance(bad, Rejected) and "could not decode" in bad.reason
    assert fine.transcript.text == "fine part 0"


def test_reconfigure_sets_batch_limits() -> None:
    transcriber = fake_transcriber()
    transcriber.reconfigure({"max_batch_size": 2, "batch_wait_timeout_s": 0.01})

    async def run() -> None:
        await asyncio.gather(*(final(transcriber.transcribe(b"FAKE x 3", NONE)) for _ in range(4)))

    asyncio.run(run())
    engine = transcriber.engine
    assert isinstance(engine, FakeEngine)
    assert max(engine.batches) == 2


def test_a_hint_that_more_jobs_are_coming_holds_the_first_batch() -> None:
    """The first job of a burst waits for the others instead of being decoded alone."""

    def first_batch(more_coming: bool) -> list[int]:
        transcriber = fake_transcriber()
        transcriber.reconfigure({"batch_wait_timeout_s": 0.0, "batch_wait_busy_s": 0.5})

        async def run() -> None:
            first = asyncio.create_task(
                final(transcriber.transcribe(b"FAKE a 1", NONE, "o", more_coming))
            )
            await asyncio.sleep(0.1)
            rest = [final(transcriber.transcribe(b"FAKE b 1", NONE, "o")) for _ in range(3)]
            await asyncio.gather(first, *rest)

        asyncio.run(run())
        engine = transcriber.engine
        assert isinstance(engine, FakeEngine)
        return engine.batches

    assert first_batch(more_coming=False)[0] == 1
    assert first_batch(more_coming=True) == [4]


def test_a_long_job_reports_its_progress_batch_by_batch() -> None:
    transcriber = fake_transcriber()
    transcriber.reconfigure({"max_batch_size": 2, "batch_wait_timeout_s": 0.0})

    async def run() -> list[Event]:
        return [event async for event in transcriber.transcribe(b"FAKE long 5", NONE)]

    events = asyncio.run(run())
    progress = [e.share for e in events if isinstance(e, Progress)]
    # 5 chunks in batches of 2: the language first, after 2 and 4 of them; then the result.
    assert progress == [0.0, 0.4, 0.8]
    assert isinstance(events[0], Progress) and events[0].language == "en"
    assert isinstance(events[-1], Finished)
    assert events[-1].transcript.text.startswith("long part 0")


def test_a_job_says_when_it_waits_for_a_batch_and_when_it_is_in_one() -> None:
    """The gateway's attempt timeout counts decoding, not the wait for a batch (issue 11)."""

    async def run() -> list[Event]:
        transcriber = fake_transcriber()
        return [e async for e in transcriber.transcribe(b"FAKE hello 1", NONE)]

    events = asyncio.run(run())
    stages = [type(e) for e in events]
    assert stages == [Queued, Decoding, Finished], events


def test_a_bug_in_the_engine_is_not_bad_input() -> None:
    """Issue 12, item 5: a TypeError from the engine ended the job `invalid_audio`, no retry.
    Only bad input may end a job as bad input; a bug raises, and the gateway retries."""
    import pytest

    from deployments.interface import EngineConfig
    from deployments.transcriber import Transcriber

    class Buggy(FakeEngine):
        def prepare(self, audio: bytes, options: object) -> object:
            raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    transcriber = Transcriber(EngineConfig(), engine_factory=Buggy)
    with pytest.raises(TypeError):
        asyncio.run(final(transcriber.transcribe(b"FAKE x 1", NONE)))
