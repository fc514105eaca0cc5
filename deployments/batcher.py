"""Batches of chunks from any jobs, formed when the engine (a worker of it) is free to take one.

Ray Serve's ``@serve.batch`` forms the next batch while the current one still
runs: chunks that arrive during a decode then wait for the batch after, and a
burst of short jobs ends in a straggler batch whose window is nearly empty
(on CPU a window costs about the same, full or not). Here, as in faster-whisper's
``BatchedInferencePipeline``, the engine takes what is queued when it is free (on
a CPU it has two workers, so a second batch may decode beside the first):

1. let the batch fill: up to ``max_batch_size`` windows (chunks, after
   packing: what one encoder/decoder pass takes), until its oldest chunk
   has waited ``wait_s`` (``busy_wait_s`` while more chunks are on their way:
   jobs being prepared, uploads in progress). Under load the oldest chunk
   arrived during the last decode, so the next batch starts at once;
2. take the windows of different owners (API keys) in turn: one window of
   each owner that has any queued, then again, in arrival order within an
   owner; a key with a long file queued does not hold back another key's
   short job (issue 11: a 7,000 s file delayed another key's 2 s clip to 123 s).
   With several workers, owners with nothing decoding come first (the batch
   holds only theirs), and one worker stays quick: while every other worker
   decodes a batch of several windows, the last one takes a single window of
   the owners already decoding, so a newcomer never waits for a full batch
   to end (on a CPU a batch lasts as long as its windows together);
3. while more chunks are on their way, hold back a packed window that is less
   than half full: its chunks go first into the next batch, with the newcomers
   (each chunk is held back at most once, so none waits long).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from deployments.interface import Chunk, ChunkResult, Packing
from deployments.packing import Window, plan_windows

# A packed window filled less than this is held back while more chunks are coming.
MIN_FILL = 0.5
# How often a filling batch asks again whether more chunks are coming: a
# caller's hint lapses with no event to wake the batch.
RECHECK_S = 0.05


@dataclass
class BatchLimits:
    max_batch_size: int = 8
    """Windows (<= 30 s each, after packing) decoded in one pass."""
    wait_s: float = 0.02
    """How long a batch waits to fill, from its oldest chunk's arrival."""
    busy_wait_s: float = 0.2
    """The same while more chunks are on their way."""
    packing: Packing = field(default_factory=Packing)


@dataclass
class _Pending:
    chunk: Chunk
    future: asyncio.Future[ChunkResult]
    arrived: float = field(default_factory=time.monotonic)
    held_back: bool = False
    started: asyncio.Event | None = None
    """Set when the first of its job's chunks goes into a batch."""


@dataclass(frozen=True)
class _InFlight:
    """A batch being decoded: whose windows, and how many."""

    owners: frozenset[str]
    windows: int


@dataclass
class BatchStats:
    """What one batch was (for logs and metrics)."""

    chunks: int
    windows: int
    audio_s: float
    held_back: int


class ChunkBatcher:
    """Queues chunks; one loop forms batches and hands each to ``run`` when a worker is free.

    ``coming()``: more chunks are on their way (jobs being prepared here,
    uploads in progress at a gateway). ``workers``: batches that may decode at
    once (the engine's workers); a batch forms when one of them is free.
    """

    def __init__(
        self,
        run: Callable[[list[Chunk]], Awaitable[list[ChunkResult]]],
        *,
        coming: Callable[[], bool],
        on_batch: Callable[[BatchStats], None] | None = None,
        workers: int = 1,
    ) -> None:
        self._run = run
        self._coming = coming
        self._on_batch = on_batch
        self.workers = workers
        self.limits = BatchLimits()
        self._queue: list[_Pending] = []
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._decoding: dict[asyncio.Task[None], _InFlight] = {}

    def enqueue(
        self, chunks: list[Chunk], started: asyncio.Event | None = None
    ) -> list[asyncio.Future[ChunkResult]]:
        """Queue a job's chunks (all at once, so one batch sees them together).

        ``started`` is set when the first of them goes into a batch.
        """
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._loop())
        loop = asyncio.get_running_loop()
        pending = [_Pending(chunk, loop.create_future(), started=started) for chunk in chunks]
        self._queue += pending
        self._arrived.set()
        return [p.future for p in pending]

    def nudge(self) -> None:
        """Something changed (a job was prepared): re-check whether to start the batch."""
        self._arrived.set()

    async def _loop(self) -> None:
        while True:
            while not self._queue or len(self._decoding) >= self.workers:
                self._arrived.clear()
                await self._arrived.wait()
            await self._fill()
            batch, in_flight = self._take()
            if not batch:
                continue
            task = asyncio.create_task(self._decode(batch))
            self._decoding[task] = in_flight
            task.add_done_callback(self._decoded)

    def _decoded(self, task: asyncio.Task[None]) -> None:
        self._decoding.pop(task, None)
        self._arrived.set()  # a worker is free: the loop looks again

    async def _decode(self, batch: list[_Pending]) -> None:
        try:
            results = await self._run([p.chunk for p in batch])
        except Exception as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        again: list[_Pending] = []
        for p, result in zip(batch, results, strict=True):
            if p.future.done():
                continue
            if result.again_alone:
                # Unpacked, first in the queue; it has waited already, so the
                # next batch starts as soon as a worker is free.
                again.append(
                    dataclasses.replace(p, chunk=dataclasses.replace(p.chunk, packable=False))
                )
            else:
                p.future.set_result(result)
        if again:
            self._queue = again + self._queue
            self._arrived.set()

    async def _fill(self) -> None:
        """Wait until the queue fills a batch, or the wait (from its oldest chunk) has passed."""
        limits = self.limits
        while len(self._plan()[1]) < limits.max_batch_size:
            wait = limits.busy_wait_s if self._coming() else limits.wait_s
            left = self._queue[0].arrived + wait - time.monotonic()
            if left <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, RECHECK_S))

    def _plan(self) -> tuple[list[_Pending], list[Window]]:
        """The chunks still wanted, and the windows they make, in arrival order."""
        live = [p for p in self._queue if not p.future.done()]  # callers gone
        return live, plan_windows([p.chunk for p in live], self.limits.packing)

    def _take(self) -> tuple[list[_Pending], _InFlight]:
        """The next batch: up to ``max_batch_size`` windows of what is queued (``_in_turn``).

        While more chunks are coming, a nearly empty packed window waits for them.
        """
        limits = self.limits
        live, windows = self._plan()
        busy = self._decoding.values()
        chosen = _in_turn(
            windows,
            [p.chunk.owner for p in live],
            limits.max_batch_size,
            decoding=frozenset().union(*(b.owners for b in busy)),
            quick=len(busy) == self.workers - 1 > 0 and all(b.windows > 1 for b in busy),
        )
        held: set[int] = set()
        if self._coming() and limits.packing.enabled:
            # The last window of each packing key is the one still filling.
            last_of_key = {
                live[w.members[0]].chunk.pack_key: w
                for w in windows
                if live[w.members[0]].chunk.packable
                and live[w.members[0]].chunk.duration <= limits.packing.max_clip_s
            }
            for window in last_of_key.values():
                if (
                    any(window is c for c in chosen)
                    and window.duration < MIN_FILL * limits.packing.window_s
                    and not any(live[m].held_back for m in window.members)
                ):
                    held.update(window.members)
        taken = {m for w in chosen for m in w.members}
        if held == taken:
            held = set()  # never leave the engine idle
        batch = [p for i, p in enumerate(live) if i in taken and i not in held]
        for p in batch:
            if p.started is not None:
                p.started.set()
        for i in held:
            live[i].held_back = True
        # Held-back chunks first: they go into the next batch, with the newcomers.
        self._queue = [live[i] for i in sorted(held)] + [
            p for i, p in enumerate(live) if i not in taken
        ]
        windows_taken = sum(1 for w in chosen if w.members[0] not in held)
        if batch and self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    chunks=len(batch),
                    windows=windows_taken,
                    audio_s=sum(p.chunk.duration for p in batch),
                    held_back=len(held),
                )
            )
        return batch, _InFlight(frozenset(p.chunk.owner for p in batch), windows_taken)


def _in_turn(
    windows: list[Window],
    owners: list[str],
    size: int,
    decoding: frozenset[str] = frozenset(),
    quick: bool = False,
) -> list[Window]:
    """The next batch: windows round-robin by owner (owners in order of their first window),
    at most ``size``, and while several owners wait, at most an even share of ``size`` from
    any one: a batch lasts as long as its windows, so another key's short job is not held
    in a batch filled with one key's long file (a smaller batch then, for a while).

    ``decoding``: owners with a batch on another worker. While any queued owner has none,
    the batch holds only such owners' windows. ``quick``: this batch takes the last free
    worker while the others decode batches of several windows; of the owners decoding it
    takes one window, so a worker frees soon for whoever comes next.
    """
    queues: dict[str, list[Window]] = {}
    for window in windows:
        queues.setdefault(owners[window.members[0]], []).append(window)
    idle = {owner: q for owner, q in queues.items() if owner not in decoding}
    if idle and len(idle) < len(queues):
        queues = idle
    elif not idle and quick:
        return windows[:1]
    if len(queues) == 1:
        return next(iter(queues.values()))[:size]
    share = math.ceil(size / len(queues))
    out: list[Window] = []
    for turn in itertools.islice(itertools.zip_longest(*queues.values()), share):
        out += [w for w in turn if w is not None]
    return out[:size]
