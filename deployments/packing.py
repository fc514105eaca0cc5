"""Packing short jobs into shared 30 s windows, and splitting the words back.

Whisper pads every input to 30 s, so a 4 s clip costs as much as 30 s of audio.
Short clips that may be decoded together (same owner, same options) are laid
end to end with a second of silence between them, decoded as one window with
word timestamps, and each word goes back to the clip its midpoint falls in.
Splitting by segment instead mixes clips up: one segment can span two clips.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deployments.audio import SAMPLE_RATE
from deployments.interface import Chunk, Segment, Word

GAP_S = 1.0
# Speech left after the last decoded word for a clip to count as cut short.
REACH_SLACK_S = 1.0
_GAP = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
_GAP.flags.writeable = False


@dataclass(frozen=True)
class Packing:
    """Live-tunable packing (``user_config``)."""

    enabled: bool = True
    window_s: float = 28.0

    @property
    def max_clip_s(self) -> float:
        """Clips longer than this decode alone: two must fit in a window."""
        return (self.window_s - GAP_S) / 2


@dataclass
class Window:
    """What one encoder slot decodes: one chunk, or several packed short ones."""

    members: list[int]
    starts: list[float]
    pieces: list[np.ndarray]
    duration: float

    @classmethod
    def of(cls, index: int, chunk: Chunk) -> Window:
        return cls(members=[index], starts=[0.0], pieces=[chunk.samples], duration=chunk.duration)

    @property
    def packed(self) -> bool:
        return len(self.members) > 1

    def add(self, index: int, chunk: Chunk) -> None:
        self.pieces += [_GAP, chunk.samples]
        start = self.duration + GAP_S
        self.members.append(index)
        self.starts.append(start)
        self.duration = start + chunk.duration

    @property
    def samples(self) -> np.ndarray:
        return self.pieces[0] if len(self.pieces) == 1 else np.concatenate(self.pieces)


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


def split_words(
    window: Window, chunks: Sequence[Chunk], subsegments: list[dict[str, Any]]
) -> dict[int, list[Segment]]:
    """Give each member chunk its own segments, from the window's timed words.

    A word belongs to the clip its midpoint falls in (the boundary between two
    clips is the middle of the silence between them). Times come back relative
    to each chunk, plus its offset, as for a chunk decoded alone.

    Whisper sometimes stops before the end of a window (a sequential pass
    would go on from there): members whose audio runs on more than
    ``REACH_SLACK_S`` past the last word are left out, to be decoded again.
    """
    ends = [s + chunks[m].duration for s, m in zip(window.starts, window.members, strict=True)]
    out: dict[int, list[Segment]] = {m: [] for m in window.members}
    for sub in subsegments:
        by_member: dict[int, list[dict[str, Any]]] = {}
        for word in sub.get("words") or []:
            middle = (word["start"] + word["end"]) / 2
            slot = len(ends) - 1
            for j, end in enumerate(ends[:-1]):
                if middle < end + GAP_S / 2:
                    slot = j
                    break
            by_member.setdefault(slot, []).append(word)
        for slot, words in by_member.items():
            member = window.members[slot]
            chunk = chunks[member]
            start = window.starts[slot]

            def local(t: float, chunk: Chunk = chunk, start: float = start) -> float:
                return round(float(chunk.offset + min(max(t - start, 0.0), chunk.duration)), 3)

            text = "".join(w["word"] for w in words)
            if text.strip():
                out[member].append(
                    Segment(
                        id=0,
                        start=local(words[0]["start"]),
                        end=local(words[-1]["end"]),
                        text=text,
                        words=timed_words({"words": words}, local)
                        if chunk.word_timestamps
                        else None,
                    )
                )
    reached = max((w["end"] for sub in subsegments for w in sub.get("words") or []), default=0.0)
    for member, end in zip(window.members, ends, strict=True):
        if end > reached + REACH_SLACK_S:
            del out[member]
    return out
