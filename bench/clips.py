"""Short spoken clips with known text, made with espeak-ng (cached under bench/.cache)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(__file__).parent / ".cache" / "clips"

# Harvard sentences (IEEE 1969), lists 1-4: phonetically balanced English.
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
    "Hoist the load to your left shoulder.",
    "Take the winding path to reach the lake.",
]
VOICES = ["en-us", "en", "en-us+m3", "en+f3"]


@dataclass(frozen=True)
class Clip:
    path: Path
    text: str
    seconds: float


def make_clips(count: int = 32) -> list[Clip]:
    """Speak the first ``count`` sentences to 16 kHz mono WAV files, once."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed: apt-get install espeak-ng (scripts/bench does it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    clips = []
    for i, text in enumerate(SENTENCES[:count]):
        path = CACHE / f"clip{i:02}.wav"
        if not path.exists():
            raw = CACHE / f"raw{i:02}.wav"
            voice = VOICES[i % len(VOICES)]
            subprocess.run(
                ["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True
            )
            _to_16k_mono(raw, path)
            raw.unlink()
        clips.append(Clip(path=path, text=text, seconds=_seconds(path)))
    return clips


def _to_16k_mono(src: Path, dst: Path) -> None:
    from deployments.audio import SAMPLE_RATE, decode
    from tests.audio_util import wav_bytes

    samples = decode(str(src))
    assert samples.size, f"espeak-ng wrote no audio for {src}"
    dst.write_bytes(wav_bytes(samples))
    assert SAMPLE_RATE == 16_000


def _seconds(path: Path) -> float:
    import wave

    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()
