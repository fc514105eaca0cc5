"""Test audio made from the committed clips (no network, no extra tools)."""

from __future__ import annotations

import io
import re
import wave
from pathlib import Path

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
