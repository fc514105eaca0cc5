"""Packing short jobs into shared 30 s windows, each still decoded on its own.

Whisper pads every input to 30 s, so a 4 s clip costs as much as 30 s of audio.
Short clips that may share a window (same packing group, same options) are
laid end to end, a second of silence apart, and go through the encoder as one
window; each clip's log-mel is computed on its own, as if alone. Then each clip
gets a decode of its own that hears only that clip: the encoder states outside
it are replaced by those of silence (engines/contract.py ``silenced``), and its
prompt ends with the timestamp where it starts. So no other clip's audio can
be read into it and no other clip's text comes before it (Whisper reads its
own earlier text as context): its words are its own by construction, not by a
split that may fall in the wrong place. What the packing shares is the encoder
pass, where the clips' states still see each other (self-attention): a word
can come out differently than alone, as with any change of context, but not
from another clip. A clip whose decode writes nothing or loops is decoded alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deployments.engines.contract import SAMPLE_RATE, TIME_PRECISION
from deployments.interface import GAP_S, Chunk, Packing
from deployments.protocol import Segment, Word

# Speech left after the last decoded word for a clip to count as cut short.
REACH_SLACK_S = 1.0


@dataclass
class Window:
    """What one encoder slot decodes: one chunk, or several packed short ones.

    It holds its chunks, not their samples: the batcher plans windows over every
    queued chunk, and a spooled chunk's samples are read only when decoded.
    """

    members: list[int]
    starts: list[float]
    parts: list[Chunk]
    gaps: list[int]
    """Silent samples before each part (the first: 0)."""
    duration: float

    @classmethod
    def of(cls, index: int, chunk: Chunk) -> Window:
        return cls(members=[index], starts=[0.0], parts=[chunk], gaps=[0], duration=chunk.duration)

    @property
    def packed(self) -> bool:
        return len(self.members) > 1

    def add(self, index: int, chunk: Chunk) -> None:
        # Clips start on the timestamp grid: a prompt can start decoding exactly there.
        start = math.ceil(round((self.duration + GAP_S) / TIME_PRECISION, 6)) * TIME_PRECISION
        self.gaps.append(round((start - self.duration) * SAMPLE_RATE))
        self.parts.append(chunk)
        self.members.append(index)
        self.starts.append(start)
        self.duration = start + chunk.duration

    @property
    def clips(self) -> list[tuple[int, int]] | None:
        """The sample ranges of the packed clips (None for one chunk alone)."""
        if not self.packed:
            return None
        starts = [round(s * SAMPLE_RATE) for s in self.starts]
        return [(a, a + c.size) for a, c in zip(starts, self.parts, strict=True)]

    @property
    def samples(self) -> np.ndarray:
        if len(self.parts) == 1:
            return self.parts[0].samples
        pieces: list[np.ndarray] = []
        for gap, chunk in zip(self.gaps, self.parts, strict=True):
            pieces += [np.zeros(gap, dtype=np.float32), chunk.samples]
        return np.concatenate(pieces)


def plan_windows(chunks: Sequence[Chunk], packing: Packing) -> list[Window]:
    """Group chunks into windows, in arrival order.

    Only chunks marked packable, with equal ``pack_key`` (owner and options)
    and equal prompt, language, task and beam size, share a window.
    """
    windows: list[Window] = []
    open_windows: dict[tuple[Any, ...], Window] = {}
    for i, chunk in enumerate(chunks):
        if not (packing.enabled and chunk.packable and chunk.duration <= packing.max_clip_s):
            windows.append(Window.of(i, chunk))
            continue
        key = (chunk.pack_key, chunk.language, chunk.task, tuple(chunk.prompt), chunk.beam_size)
        current = open_windows.get(key)
        if current is not None and current.duration + GAP_S + chunk.duration <= packing.window_s:
            current.add(i, chunk)
            continue
        fresh = Window.of(i, chunk)
        windows.append(fresh)
        open_windows[key] = fresh
    return windows


def timed_words(
    piece: dict[str, Any], clock: Callable[[float], float] = lambda t: round(float(t), 3)
) -> list[Word]:
    """faster-whisper's word dicts as Words, their times passed through ``clock``."""
    return [
        Word(
            start=clock(w["start"]),
            end=clock(w["end"]),
            word=w["word"],
            probability=round(float(w["probability"]), 4),
        )
        for w in piece.get("words") or []
    ]


def clip_segments(
    start: float, chunk: Chunk, pieces: list[dict[str, Any]], aligned: bool
) -> list[Segment]:
    """A packed clip's segments (window times, from a decode that heard only this
    clip, which starts at ``start``), timed as if decoded alone: from the clip's
    start, plus its offset, inside the clip."""

    def local(t: float) -> float:
        return round(float(chunk.offset + min(max(t - start, 0.0), chunk.duration)), 3)

    return [
        Segment(
            id=0,
            start=local(p["start"]),
            end=local(p["end"]),
            text=p["text"],
            words=timed_words(p, local) if aligned else None,
        )
        for p in pieces
    ]
