"""Test audio made from the committed clips (no network, no extra tools)."""

from __future__ import annotations

import io
import re
import wave
from pathlib import Path

import jiwer
import numpy as np

from deployments.audio import SAMPLE_RATE, decode

DATA = Path(__file__).parent / "data"
JFK = DATA / "jfk.flac"
FOX_TEXT = "the quick brown fox jumps over the lazy dog"
JFK_TEXT = (
    "and so my fellow americans ask not what your country can do for you "
    "ask what you can do for your country"
)


def wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def long_jfk(seconds: float = 49.0, repeats: int = 4) -> bytes:
    """jfk.flac said ``repeats`` times with pauses, padded to ``seconds``: more than one window."""
    speech = decode(str(JFK))
    gap = np.zeros(int(1.5 * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = []
    for i in range(repeats):
        parts += [speech] + ([gap] if i < repeats - 1 else [])
    audio = np.concatenate(parts)
    pad = int(seconds * SAMPLE_RATE) - audio.shape[0]
    assert pad >= 0, "too many repeats for the length asked"
    return wav_bytes(np.concatenate([audio, np.zeros(pad, dtype=np.float32)]))


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


def judge(packed: str, alone: str, others: list[str]) -> dict[str, bool]:
    """How a packed job's words differ from its clip's decoded alone (``words()`` text).

    ``foreign``: words it has more than its clip alone (an insertion, not a word
    said differently in its place) that another clip says, in that order: two
    words or more, or one of four letters or more (a lone "i" or "a" more is
    the clip's own sound heard differently, not a leak). ``empty``: no words
    where its clip alone has some. ``lost_edge``: its clip's first or last word
    is missing while the words next to it are there.
    """
    mine, own = packed.split(), alone.split()
    runs: list[list[str]] = []
    lost_edge = bool(own) and not mine
    if mine and own:
        chunks = jiwer.process_words(alone, packed).alignments[0]
        for k, chunk in enumerate(chunks):
            if chunk.type == "insert":
                runs.append(mine[chunk.hyp_start_idx : chunk.hyp_end_idx])
            # A first or last word gone, its neighbour heard the same (not "am i"
            # heard as "my": one sound, said differently).
            first, last = k == 0, k == len(chunks) - 1
            inner = chunks[k + 1] if first and len(chunks) > 1 else chunks[k - 1] if last else None
            if chunk.type == "delete" and (first or last):
                lost_edge = lost_edge or inner is None or inner.type == "equal"
    elif mine:
        runs = [mine]
    theirs = [other.split() for other in others]
    foreign = any(
        _said_in(part, other)
        for run in runs
        for part in ([run[i : i + 2] for i in range(len(run) - 1)] or [run])
        if len(part) >= 2 or len(part[0]) >= 4
        for other in theirs
    )
    return {"foreign": foreign, "empty": not mine and bool(own), "lost_edge": lost_edge}


def _said_in(part: list[str], text: list[str]) -> bool:
    return any(text[i : i + len(part)] == part for i in range(len(text) - len(part) + 1))


# Short clips of real human speech, cut at pauses (and three just before an
# onset, "mid-breath") from the committed real recordings: (file, start s, end s).
# Cut points are the quietest 10 ms of each pause.
REAL_CUTS: list[tuple[str, float, float | None]] = [
    ("jfk.flac", 0.0, 1.32),
    ("jfk.flac", 1.32, 2.76),
    ("jfk.flac", 2.76, 4.93),
    ("jfk.flac", 4.93, 7.93),
    ("jfk.flac", 7.93, None),
    ("jfk.flac", 0.0, 4.93),
    ("jfk.flac", 1.32, 7.93),
    ("jfk.flac", 3.2, 7.93),
    ("jfk.flac", 0.0, None),
    ("real/2412-153948-0000.flac", 0.0, 2.23),
    ("real/2412-153948-0000.flac", 2.23, 7.99),
    ("real/2412-153948-0000.flac", 7.99, None),
    ("real/2412-153948-0000.flac", 0.0, 7.99),
    ("real/2412-153948-0000.flac", 2.23, None),
    ("real/2412-153948-0000.flac", 8.4, None),
    ("real/1088-134315-0000.wav", 0.0, 1.01),
    ("real/1088-134315-0000.wav", 1.01, 2.74),
    ("real/1088-134315-0000.wav", 2.74, 8.85),
    ("real/1088-134315-0000.wav", 8.85, None),
    ("real/1088-134315-0000.wav", 9.57, None),
    ("real/1088-134315-0000.wav", 0.0, 8.85),
    ("real/1088-134315-0000-reverb.wav", 0.0, 2.74),
    ("real/1088-134315-0000-reverb.wav", 2.74, 8.85),
    ("real/1088-134315-0000-reverb.wav", 8.85, None),
    ("real/LJ002-0020.wav", 0.0, None),
]


def real_clips() -> list[tuple[str, np.ndarray]]:
    """``REAL_CUTS`` as (name, 16 kHz samples)."""
    out = []
    for name, start, end in REAL_CUTS:
        samples = decode(str(DATA / name))
        stop = samples.shape[0] if end is None else int(end * SAMPLE_RATE)
        label = f"{Path(name).stem}[{start:g}:{'' if end is None else f'{end:g}'}]"
        out.append((label, samples[int(start * SAMPLE_RATE) : stop]))
    return out


def silent_flac(seconds: float) -> bytes:
    """``seconds`` of digital silence as 16 kHz FLAC (tiny: 7,000 s is about 1 MB)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="flac") as out:
        stream = out.add_stream("flac", rate=16000, layout="mono")
        block = np.zeros((1, 16000 * 10), dtype=np.int16)
        for _ in range(int(seconds / 10)):
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


REAL_FILES = ["1088-134315-0000.wav", "2412-153948-0000.flac"]


def real_speech(seconds: float) -> np.ndarray:
    """Real read speech (two clips of tests/data/real, jfk) in turn with pauses, ``seconds`` long.

    (Not the reverb copy: a window saying one sentence twice fails the compression test.)
    """
    rng = np.random.default_rng(7)
    clips = [decode(str(DATA / "real" / n)) for n in REAL_FILES] + [decode(str(JFK))]
    parts: list[np.ndarray] = []
    total = 0
    while total < seconds * SAMPLE_RATE:
        for clip in clips:
            pause = np.zeros(int(rng.uniform(0.3, 2.5) * SAMPLE_RATE), dtype=np.float32)
            parts += [clip, pause]
            total += clip.size + pause.size
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]
