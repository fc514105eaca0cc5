"""How ChunkBatcher forms batches (no model: a recording stand-in decodes)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import ClassVar

import numpy as np

from deployments.audio import Spool, SpooledWindow
from deployments.batcher import BatchLimits, BatchStats, ChunkBatcher
from deployments.interface import Chunk, ChunkResult, Packing


def clip(seconds: float, key: str = "owner", owner: str = "") -> Chunk:
    return Chunk(
        owner=owner,
        audio=np.zeros(int(seconds * 16000), dtype=np.float32),
        offset=0.0,
        duration=seconds,
        prompt=[1],
        language="en",
        task="transcribe",
        beam_size=5,
        pack_key=key,
        packable=True,
    )


class Engine:
    """Records batches; each decode takes ``seconds`` (the event loop stays free)."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds
        self.batches: list[list[float]] = []

    async def run(self, chunks: list[Chunk]) -> list[ChunkResult]:
        self.batches.append([c.duration for c in chunks])
        await asyncio.sleep(self.seconds)
        return [ChunkResult() for _ in chunks]


def batcher(engine: Engine, coming: list[bool], **limits: float) -> ChunkBatcher:
    b = ChunkBatcher(engine.run, coming=lambda: coming[0])
    b.limits = BatchLimits(packing=Packing(enabled=True, window_s=28.0), **limits)  # type: ignore[arg-type]
    return b


def test_chunks_that_arrive_during_a_decode_go_together_into_the_next_batch() -> None:
    """@serve.batch would form the next batch during the decode and leave stragglers."""
    engine = Engine(seconds=0.3)

    async def run() -> None:
        b = batcher(engine, [False], wait_s=0.0)
        first = b.enqueue([clip(30)])
        await asyncio.sleep(0.05)  # the first batch is decoding
        later = []
        for _ in range(6):
            later += b.enqueue([clip(30)])
            await asyncio.sleep(0.03)
        await asyncio.gather(*first, *later)

    asyncio.run(run())
    assert [len(batch) for batch in engine.batches] == [1, 6]


def test_with_two_workers_a_second_batch_decodes_beside_the_first() -> None:
    """On a CPU one batch leaves part of the cores idle: two decode at once."""
    engine = Engine(seconds=0.4)

    async def run() -> float:
        b = ChunkBatcher(engine.run, coming=lambda: False, workers=2)
        b.limits = BatchLimits(wait_s=0.0)
        loop = asyncio.get_running_loop()
        begin = loop.time()
        first = b.enqueue([clip(30)])
        await asyncio.sleep(0.05)  # the first batch is decoding
        second = b.enqueue([clip(30)])
        await asyncio.gather(*first, *second)
        return loop.time() - begin

    took = asyncio.run(asyncio.wait_for(run(), 10))
    assert engine.batches == [[30], [30]] and took < 0.75


def test_a_batch_starts_soon_after_the_hint_that_more_are_coming_lapses() -> None:
    """The busy wait is a cap: once nothing is coming, the batch does not sit out the rest."""
    engine = Engine(seconds=0.01)
    coming = [True]

    async def run() -> float:
        b = batcher(engine, coming, wait_s=0.0, busy_wait_s=5.0)
        loop = asyncio.get_running_loop()
        begin = loop.time()
        futures = b.enqueue([clip(3)])
        await asyncio.sleep(0.2)
        assert engine.batches == []  # waiting while more are coming
        coming[0] = False  # the hint lapses: no chunk arrives to say so
        await asyncio.gather(*futures)
        return loop.time() - begin

    took = asyncio.run(asyncio.wait_for(run(), 10))
    assert engine.batches == [[3]] and took < 1.0


def test_a_nearly_empty_packed_window_waits_for_the_chunks_still_coming() -> None:
    engine = Engine()
    coming = [True]
    stats: list[BatchStats] = []

    async def run() -> None:
        b = batcher(engine, coming, wait_s=0.0, busy_wait_s=0.0)
        b._on_batch = stats.append
        # 7 x 3 s fill one 28 s window (3 s + 1 s gap each); the 8th starts a second.
        futures = b.enqueue([clip(3) for _ in range(8)])
        await asyncio.sleep(0.1)  # first batch decoding; the 8th clip waits
        coming[0] = False
        futures += b.enqueue([clip(3) for _ in range(3)])
        await asyncio.gather(*futures)

    asyncio.run(run())
    assert [len(batch) for batch in engine.batches] == [7, 4]
    assert stats[0].held_back == 1 and stats[0].windows == 1
    assert stats[1].held_back == 0


def test_a_chunk_is_held_back_once_and_the_engine_never_idles() -> None:
    engine = Engine(seconds=0.05)

    async def run() -> None:
        b = batcher(engine, [True], wait_s=0.0, busy_wait_s=0.0)
        # Alone in its window: holding it would leave the engine with nothing.
        await asyncio.gather(*b.enqueue([clip(3)]))
        # 8 clips: the eighth is held once, then goes with the next batch.
        futures = b.enqueue([clip(3) for _ in range(8)])
        await asyncio.sleep(0.01)
        futures += b.enqueue([clip(3, key="other")])
        await asyncio.gather(*futures)

    asyncio.run(asyncio.wait_for(run(), 5))
    assert engine.batches[0] == [3]
    assert sum(len(batch) for batch in engine.batches) == 10


def test_a_cancelled_caller_is_left_out_and_errors_reach_every_caller() -> None:
    calls: list[int] = []

    async def failing(chunks: list[Chunk]) -> list[ChunkResult]:
        calls.append(len(chunks))
        raise RuntimeError("engine down")

    async def run() -> None:
        b = ChunkBatcher(failing, coming=lambda: False)
        b.limits = BatchLimits(wait_s=0.05)
        gone = b.enqueue([clip(30)])
        gone[0].cancel()
        waiting = b.enqueue([clip(30), clip(30)])
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)

    asyncio.run(run())
    assert calls == [2]


def test_a_batch_holds_at_most_max_batch_size_windows_after_packing() -> None:
    engine = Engine(seconds=0.05)
    stats: list[BatchStats] = []

    async def run() -> None:
        b = batcher(engine, [False], wait_s=0.0, max_batch_size=2)
        b._on_batch = stats.append
        # 16 clips of 3 s, 7 to a window: 3 windows; 2 go first, in arrival order.
        await asyncio.gather(*b.enqueue([clip(3) for _ in range(16)]))
        # Long chunks are a window each.
        await asyncio.gather(*b.enqueue([clip(30) for _ in range(5)]))

    asyncio.run(run())
    assert [len(batch) for batch in engine.batches] == [14, 2, 2, 2, 1]
    assert [s.windows for s in stats] == [2, 1, 2, 2, 1]


def test_a_long_queue_of_one_owner_does_not_hold_back_another_owners_short_job() -> None:
    """Issue 11: one key's 7,000 s file (234 chunks) delayed another key's 2 s clip to 123 s.

    Batches take windows round-robin by owner: the other key's chunk goes into the
    next batch, not after the long file.
    """
    engine = Engine(seconds=0.1)

    async def run() -> None:
        b = batcher(engine, [False], wait_s=0.0, max_batch_size=4)
        long_file = b.enqueue([clip(30, key="a|opts", owner="a") for _ in range(20)])
        await asyncio.sleep(0.03)  # the first batch (the long file's) is decoding
        short = b.enqueue([clip(2, key="b|opts", owner="b")])
        await asyncio.gather(*long_file, *short)

    asyncio.run(run())
    assert engine.batches[0] == [30] * 4
    assert 2 in engine.batches[1], engine.batches
    assert sum(len(batch) for batch in engine.batches) == 21


def test_owners_take_turns_window_by_window() -> None:
    engine = Engine(seconds=0.1)

    async def run() -> None:
        b = batcher(engine, [False], wait_s=0.0, max_batch_size=4)
        futures = b.enqueue([clip(30, key="a", owner="a") for _ in range(6)])
        futures += b.enqueue([clip(29, key="b", owner="b") for _ in range(6)])
        futures += b.enqueue([clip(28, key="c", owner="c") for _ in range(1)])
        await asyncio.gather(*futures)

    asyncio.run(run())
    # All arrived before the first batch formed: one window of each owner in turn.
    assert sorted(engine.batches[0]) == [28, 29, 30, 30]
    assert sorted(engine.batches[1]) == [29, 29, 30, 30]


def test_while_another_owner_waits_one_owner_fills_at_most_its_share_of_a_batch() -> None:
    """A batch lasts as long as its windows: another key's short job should not share one
    with seven windows of one key's long file."""
    engine = Engine(seconds=0.05)

    async def run() -> None:
        b = batcher(engine, [False], wait_s=0.0, max_batch_size=8)
        futures = b.enqueue([clip(30, key="a", owner="a") for _ in range(20)])
        futures += b.enqueue([clip(2, key="b", owner="b")])
        await asyncio.gather(*futures)

    asyncio.run(run())
    assert sorted(engine.batches[0]) == [2, 30, 30, 30, 30]  # b's clip and a's share (4)
    assert [len(batch) for batch in engine.batches[1:]] == [8, 8]  # a alone: full batches


class PerWindowEngine(Engine):
    """A CPU stand-in: a batch takes ``seconds`` per window, so its size sets its length."""

    async def run(self, chunks: list[Chunk]) -> list[ChunkResult]:
        self.batches.append([c.duration for c in chunks])
        await asyncio.sleep(self.seconds * len(chunks))
        return [ChunkResult() for _ in chunks]


def test_with_two_workers_one_owners_long_file_leaves_a_worker_quick_for_another_owner() -> None:
    """Issue 11: a 7,000 s file held both workers with batches of 8 windows (3 s each on 2
    cores), so another key's clip waited for one to end and then shared a batch with 4 of
    the file's windows: 9x its idle latency. One worker stays quick (one window at a time
    while the other decodes a full batch), and the clip is decoded alone in the next free one."""
    engine = PerWindowEngine(seconds=0.05)

    async def run() -> tuple[float, float]:
        b = ChunkBatcher(engine.run, coming=lambda: False, workers=2)
        b.limits = BatchLimits(wait_s=0.0, max_batch_size=8)
        loop = asyncio.get_running_loop()
        begin = loop.time()
        long_file = b.enqueue([clip(30, owner="a") for _ in range(48)])
        await asyncio.sleep(0.12)  # both workers are decoding the long file
        arrived = loop.time()
        short = b.enqueue([clip(2, owner="b")])
        await asyncio.gather(*short)
        clip_s = loop.time() - arrived
        await asyncio.gather(*long_file)
        return clip_s, loop.time() - begin

    clip_s, total_s = asyncio.run(asyncio.wait_for(run(), 20))
    assert [2] in engine.batches, engine.batches  # decoded alone
    assert clip_s < 0.2, clip_s  # one quick window's wait and its own: 2x a window alone
    # The long file keeps both workers: 48 windows of 0.05 s on one worker take 2.4 s.
    assert total_s < 2.1, total_s
    assert sum(len(batch) for batch in engine.batches) == 49


def test_a_batch_that_takes_in_an_idle_owner_holds_only_idle_owners_windows() -> None:
    """An owner with nothing decoding comes first: a worker that frees while one key's long
    file decodes on the other takes the newcomer's windows only, not a share of the file's."""
    engine = PerWindowEngine(seconds=0.05)

    async def run() -> None:
        b = ChunkBatcher(engine.run, coming=lambda: False, workers=2)
        b.limits = BatchLimits(wait_s=0.0, max_batch_size=8)
        futures = b.enqueue([clip(30, owner="a") for _ in range(24)])
        await asyncio.sleep(0.01)  # a's first batch (8) decodes; a's quick one (1) too
        futures += b.enqueue([clip(2, owner="b"), clip(3, owner="c")])
        await asyncio.gather(*futures)

    asyncio.run(asyncio.wait_for(run(), 10))
    assert engine.batches[:2] == [[30] * 8, [30]], engine.batches
    assert sorted(engine.batches[2]) == [2, 3], engine.batches  # b and c, none of a's


class CountedWindow(SpooledWindow):
    """A spooled window that counts its reads."""

    reads: ClassVar[list[int]] = []

    def read(self) -> np.ndarray:
        self.reads.append(1)
        return super().read()


def test_planning_batches_reads_no_spooled_samples() -> None:
    """The batcher plans windows over every queued chunk each time it looks: a long file's
    spooled windows (deployments/audio.py) must not be read then, only when decoded (a 7,000 s
    file's 234 windows were read from its spool at every look: the long file took 84 s, not
    55, and another key's clip 3.2x its idle latency)."""
    spool = Spool()
    spool.append(np.zeros(30 * 16000 * 40, dtype=np.int16))
    engine = Engine(seconds=0.01)

    def spooled(k: int) -> Chunk:
        step = 30 * 16000
        return dataclasses.replace(
            clip(30, owner="a"), audio=CountedWindow(spool, ((k * step, (k + 1) * step),))
        )

    async def run() -> None:
        b = ChunkBatcher(engine.run, coming=lambda: False, workers=2)
        b.limits = BatchLimits(wait_s=0.0, max_batch_size=4)
        await asyncio.gather(*b.enqueue([spooled(k) for k in range(40)]))

    asyncio.run(asyncio.wait_for(run(), 10))
    assert sum(len(batch) for batch in engine.batches) == 40
    assert CountedWindow.reads == []  # the stand-in engine reads none; the planning neither


def test_a_packed_clip_to_decode_again_alone_does_not_hold_back_its_batch() -> None:
    """The engine hands back a packed clip whose words were not clear-cut (again_alone):
    the batch's other clips are answered at once, and the clip alone in the next batch,
    unpacked, on the same future."""

    class Guarding(Engine):
        async def run(self, chunks: list[Chunk]) -> list[ChunkResult]:
            await super().run(chunks)
            self.packable = [c.packable for c in chunks]
            return [ChunkResult(again_alone=c.packable and c.duration == 3.0) for c in chunks]

    engine = Guarding(seconds=0.3)

    async def run() -> list[float]:
        b = batcher(engine, [False], wait_s=0.0)
        loop = asyncio.get_running_loop()
        begin = loop.time()
        futures = b.enqueue([clip(2.0)]) + b.enqueue([clip(3.0)]) + b.enqueue([clip(4.0)])
        ends: list[float] = [0.0] * 3
        for k, future in enumerate(futures):
            future.add_done_callback(lambda _f, k=k: ends.__setitem__(k, loop.time() - begin))
        results = await asyncio.gather(*futures)
        assert not any(r.again_alone for r in results)
        return ends

    ends = asyncio.run(run())
    assert engine.batches == [[2.0, 3.0, 4.0], [3.0]]
    assert engine.packable == [False]  # the second time, alone
    assert ends[0] < 0.45 and ends[2] < 0.45, ends  # answered with the first batch
    assert ends[1] >= 0.6, ends
