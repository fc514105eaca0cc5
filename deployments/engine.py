"""The transcription engine: plain Python, no Ray.

A job goes through three steps so that a deployment can batch the middle one
across jobs: ``prepare`` (decode, VAD, cut into <= 30 s chunks, features),
``run_batch`` (one encoder/decoder pass over chunks of any jobs) and
``assemble`` (put a job's chunk results back on its own timeline).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

import numpy as np
from faster_whisper.audio import pad_or_trim

from deployments.audio import SAMPLE_RATE, AudioTooLong, SpeechLayout, decode, split_speech

logger = logging.getLogger("ray.serve.whisper.engine")

Task = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class TranscribeOptions:
    """Per-job decoding options."""

    language: str | None = None
    task: Task = "transcribe"
    initial_prompt: str | None = None
    vad_filter: bool = True
    beam_size: int = 5


@dataclass
class Chunk:
    """One window of at most 30 s of one job, ready for the encoder."""

    features: np.ndarray
    offset: float
    duration: float
    prompt: list[int]
    language: str
    task: Task
    beam_size: int


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str


@dataclass
class ChunkResult:
    """What one chunk decoded to; ``error`` is set instead when it failed alone."""

    segments: list[Segment] = field(default_factory=list)
    error: str | None = None


@dataclass
class PreparedAudio:
    chunks: list[Chunk]
    layout: SpeechLayout
    language: str


@dataclass
class Transcript:
    text: str
    segments: list[Segment]
    language: str
    duration: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class AudioError(ValueError):
    """The input cannot be transcribed; retrying will not help."""


class Engine(Protocol):
    """What a deployment needs from an engine."""

    def prepare(self, audio: bytes, options: TranscribeOptions) -> PreparedAudio: ...

    def run_batch(self, chunks: Sequence[Chunk]) -> list[ChunkResult]: ...


@dataclass(frozen=True)
class EngineConfig:
    """How to load the model; resolved by the app builder, used on the replica."""

    model: str = "tiny.en"
    device: Literal["cpu", "cuda"] = "cpu"
    compute_type: str = "auto"
    cpu_threads: int = 0
    cache_dir: str = "data/models"
    max_audio_seconds: float | None = None


def assemble(prepared: PreparedAudio, results: Sequence[ChunkResult]) -> Transcript:
    """Join a job's chunk results, in order, on the original audio's timeline."""
    for result in results:
        if result.error is not None:
            raise AudioError(result.error)
    segments: list[Segment] = []
    for result in results:
        for seg in result.segments:
            segments.append(
                Segment(
                    id=len(segments),
                    start=prepared.layout.original_time(seg.start),
                    end=prepared.layout.original_time(seg.end, is_end=True),
                    text=seg.text,
                )
            )
    text = "".join(seg.text for seg in segments).strip()
    return Transcript(
        text=text,
        segments=segments,
        language=prepared.language,
        duration=round(prepared.layout.duration, 3),
    )


class WhisperEngine:
    """faster-whisper (CTranslate2) with batches that may mix jobs.

    faster-whisper's ``BatchedInferencePipeline`` batches the chunks of one file
    under one prompt. CTranslate2's ``generate`` takes one prompt per item, so
    here each chunk carries its own (language, task, initial prompt) and chunks
    from many jobs share one encoder pass and one decoder call.
    """

    def __init__(self, config: EngineConfig) -> None:
        from faster_whisper import WhisperModel

        from deployments.models import resolve_model

        self.max_audio_seconds = config.max_audio_seconds
        path = resolve_model(config.model, cache_dir=config.cache_dir)
        compute_type = config.compute_type
        if compute_type == "auto":
            compute_type = "float16" if config.device == "cuda" else "int8"
        # Ray sets OMP_NUM_THREADS=1 in workers, and CTranslate2 reads it when
        # cpu_threads is 0: pass the count ourselves or decoding uses one core.
        threads = config.cpu_threads or os.cpu_count() or 1
        self.model = WhisperModel(
            path, device=config.device, compute_type=compute_type, cpu_threads=threads
        )
        self.multilingual = bool(self.model.model.is_multilingual)
        logger.info(
            "loaded model %s on %s (%s, %d threads)",
            config.model,
            config.device,
            compute_type,
            threads,
        )

    def _tokenizer(self, language: str, task: Task):  # type: ignore[no-untyped-def]
        from faster_whisper.tokenizer import Tokenizer

        return Tokenizer(self.model.hf_tokenizer, self.multilingual, task=task, language=language)

    def prepare(self, audio: bytes, options: TranscribeOptions) -> PreparedAudio:
        try:
            samples = decode(io.BytesIO(audio), max_seconds=self.max_audio_seconds)
        except AudioTooLong as exc:
            raise AudioError(f"{exc} (MAX_AUDIO_SECONDS)") from exc
        except Exception as exc:  # PyAV raises many types for bad input
            raise AudioError(f"could not decode the audio: {exc}") from exc
        layout, pieces = split_speech(samples, vad_filter=options.vad_filter)
        extractor = self.model.feature_extractor
        features = [extractor(piece)[..., :-1] for piece in pieces]
        language = self._language(options.language, features)
        if not self.multilingual and options.task == "translate":
            raise AudioError("this model is English-only and cannot translate")
        tokenizer = self._tokenizer(language, options.task)
        previous = (
            tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
        )
        prompt = self.model.get_prompt(tokenizer, previous_tokens=previous)
        chunks = [
            Chunk(
                features=pad_or_trim(feat),
                offset=offset,
                duration=duration,
                prompt=prompt,
                language=language,
                task=options.task,
                beam_size=options.beam_size,
            )
            for feat, (offset, duration) in zip(features, layout.windows, strict=True)
        ]
        return PreparedAudio(chunks=chunks, layout=layout, language=language)

    def _language(self, requested: str | None, features: list[np.ndarray]) -> str:
        if not self.multilingual:
            if requested not in (None, "en"):
                raise AudioError(
                    f"this model is English-only; language={requested!r} is not available"
                )
            return "en"
        if requested is not None:
            if requested not in self.model.supported_languages:
                raise AudioError(f"unknown language code {requested!r}")
            return requested
        if not features:
            return "en"
        language, _prob, _all = self.model.detect_language(
            features=np.concatenate(features, axis=1)
        )
        return str(language)

    def run_batch(self, chunks: Sequence[Chunk]) -> list[ChunkResult]:
        """Decode chunks of any jobs; a failure marks its own items only."""
        results: list[ChunkResult] = [ChunkResult() for _ in chunks]
        by_beam: dict[int, list[int]] = {}
        for i, chunk in enumerate(chunks):
            by_beam.setdefault(chunk.beam_size, []).append(i)
        for beam_size, indexes in by_beam.items():
            try:
                decoded = self._generate([chunks[i] for i in indexes], beam_size)
            except Exception as exc:
                logger.warning(
                    "batch of %d chunks failed (%s); decoding them one by one",
                    len(indexes),
                    type(exc).__name__,
                )
                for i in indexes:
                    results[i] = self._decode_alone(chunks[i])
                continue
            for i, segments in zip(indexes, decoded, strict=True):
                results[i] = ChunkResult(segments=segments)
        return results

    def _decode_alone(self, chunk: Chunk) -> ChunkResult:
        """Decode one chunk by itself, so that a bad one fails only its own job."""
        try:
            return ChunkResult(segments=self._generate([chunk], chunk.beam_size)[0])
        except Exception as exc:
            return ChunkResult(error=f"decoding failed ({type(exc).__name__})")

    def _generate(self, chunks: Sequence[Chunk], beam_size: int) -> list[list[Segment]]:
        model = self.model
        encoder_output = model.encode(np.stack([c.features for c in chunks]))
        results = model.model.generate(
            encoder_output,
            [c.prompt for c in chunks],
            beam_size=beam_size,
            max_length=model.max_length,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
            return_no_speech_prob=True,
        )
        out: list[list[Segment]] = []
        for chunk, result in zip(chunks, results, strict=True):
            tokenizer = self._tokenizer(chunk.language, chunk.task)
            pieces, _seek, _single = model._split_segments_by_timestamps(
                tokenizer=tokenizer,
                tokens=result.sequences_ids[0],
                time_offset=chunk.offset,
                segment_size=int(np.ceil(chunk.duration) * model.frames_per_second),
                segment_duration=chunk.duration,
                seek=0,
            )
            # Whisper may predict an end past its window: keep times inside it.
            last = chunk.offset + chunk.duration
            segments = [
                Segment(
                    id=0,
                    start=round(min(max(piece["start"], chunk.offset), last), 3),
                    end=round(min(max(piece["end"], chunk.offset), last), 3),
                    text=tokenizer.decode(piece["tokens"]),
                )
                for piece in pieces
            ]
            out.append([s for s in segments if s.text.strip()])
        return out


__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "Chunk",
    "ChunkResult",
    "Engine",
    "EngineConfig",
    "PreparedAudio",
    "Segment",
    "TranscribeOptions",
    "Transcript",
    "WhisperEngine",
    "assemble",
]
