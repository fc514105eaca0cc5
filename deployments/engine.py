"""The Whisper pipeline: plain Python, no Ray, the same over every engine.

The engine (deployments/engines/: CTranslate2 or torch, chosen by
``WHISPER_ENGINE``) encodes, decodes and aligns windows; everything else is
here, once. A job goes through three steps so that a deployment can batch the middle one
across jobs: ``prepare`` (decode, VAD, cut into <= 30 s chunks), ``run_batch``
(pack short jobs into shared windows, one encoder/decoder pass over windows of
any jobs) and ``assemble`` (put a job's results back on its own timeline).
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

from deployments.audio import SAMPLE_RATE, AudioTooLong, decode, split_speech
from deployments.engines import registry, timing
from deployments.engines.contract import MAX_LENGTH, WhisperBackend
from deployments.engines.tokenizer import WhisperTokenizer
from deployments.engines.tokenizer import load as load_vocabulary
from deployments.interface import (
    AudioError,
    Chunk,
    ChunkResult,
    EngineConfig,
    PreparedAudio,
    Segment,
    Task,
    TranscribeOptions,
)
from deployments.packing import (
    REACH_SLACK_S,
    Packing,
    Window,
    plan_windows,
    split_words,
    timed_words,
)

logger = logging.getLogger("ray.serve.whisper.engine")

# faster-whisper's threshold for text that repeats itself (a decoding loop).
MAX_COMPRESSION_RATIO = 2.4
# Budget for packed windows: fast English speech with timestamps is about 5.
TOKENS_PER_SECOND = 7
# A chunk whose text ended early is decoded on from there, at most this many
# more times, and only if the last pass got at least this far (progress).
MAX_CONTINUATIONS = 4
MIN_STEP_S = 1.0


def before_loop(pieces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A window's segments up to the first that repeats itself (a decoding loop).

    faster-whisper's test: text whose gzip compression ratio is over 2.4.
    If only the whole text fails it (a loop of short segments), nothing is kept.
    """
    for i, piece in enumerate(pieces):
        if timing.compression_ratio(piece["text"]) > MAX_COMPRESSION_RATIO:
            return pieces[:i]
    if timing.compression_ratio("".join(p["text"] for p in pieces)) > MAX_COMPRESSION_RATIO:
        return []
    return pieces


class WhisperEngine:
    """Whisper with batches that may mix jobs, over any engine.

    faster-whisper's ``BatchedInferencePipeline`` batches the chunks of one file
    under one prompt. Here each window carries its own (language, task, initial
    prompt), and windows of many jobs share one encoder pass and one decoder
    call. Short jobs of one owner with the same options are packed into shared
    windows (deployments/packing.py).
    """

    def __init__(self, config: EngineConfig, backend: WhisperBackend | None = None) -> None:
        self.max_audio_seconds = config.max_audio_seconds
        self.packing = Packing()
        self.backend = backend if backend is not None else registry.load(config)
        self.workers = self.backend.workers
        self.multilingual = self.backend.multilingual
        self._vocabulary = load_vocabulary(self.backend.tokenizer_json)

    @cache  # noqa: B019 - one tokenizer per (language, task), for the engine's life
    def _tokenizer(self, language: str, task: Task) -> WhisperTokenizer:
        return WhisperTokenizer(
            self._vocabulary, multilingual=self.multilingual, language=language, task=task
        )

    def set_packing(self, packing: Packing) -> None:
        self.packing = packing

    def prepare(self, audio: bytes, options: TranscribeOptions) -> PreparedAudio:
        try:
            samples = decode(io.BytesIO(audio), max_seconds=self.max_audio_seconds)
        except AudioTooLong as exc:
            raise AudioError(f"{exc} (MAX_AUDIO_SECONDS)") from exc
        except Exception as exc:  # PyAV raises many types for bad input
            raise AudioError(f"could not decode the audio: {exc}") from exc
        layout, pieces = split_speech(samples, vad_filter=options.vad_filter)
        language = self._language(options.language, pieces)
        if not self.multilingual and options.task == "translate":
            raise AudioError("this model is English-only and cannot translate")
        prompt = self._tokenizer(language, options.task).prompt(options.initial_prompt)
        chunks = [
            Chunk(
                samples=piece,
                offset=offset,
                duration=duration,
                prompt=prompt,
                language=language,
                task=options.task,
                beam_size=options.beam_size,
                packable=len(pieces) == 1,
                word_timestamps=options.word_timestamps,
            )
            for piece, (offset, duration) in zip(pieces, layout.windows, strict=True)
        ]
        return PreparedAudio(chunks=chunks, layout=layout, language=language)

    def _language(self, requested: str | None, pieces: list[np.ndarray]) -> str:
        if not self.multilingual:
            if requested not in (None, "en"):
                raise AudioError(
                    f"this model is English-only; language={requested!r} is not available"
                )
            return "en"
        if requested is not None:
            if requested not in self.backend.languages:
                raise AudioError(f"unknown language code {requested!r}")
            return requested
        if not pieces:
            return "en"
        return self.backend.detect_language(pieces[0])[0][0]

    def run_batch(self, chunks: Sequence[Chunk]) -> list[ChunkResult]:
        """Decode chunks of any jobs; a failure marks its own chunks only."""
        results: list[ChunkResult] = [ChunkResult() for _ in chunks]
        windows = plan_windows(chunks, self.packing)
        if len(windows) < len(chunks):
            logger.info("packed %d chunks into %d windows", len(chunks), len(windows))
        reached: dict[int, float] = {}
        cut_short = self._run_windows(windows, chunks, results, reached)
        if cut_short:
            # Whisper stopped before the end of a packed window (or looped):
            # the clips it did not reach go round once more, packed anew (they
            # now start their windows), then alone.
            logger.info("decoding %d packed chunks again", len(cut_short))
            again = plan_windows([chunks[i] for i in cut_short], self.packing)
            for window in again:
                window.members = [cut_short[m] for m in window.members]
            cut_short = self._run_windows(again, chunks, results, reached)
        if cut_short:
            logger.info("decoding %d packed chunks alone", len(cut_short))
            alone = [Window.of(i, chunks[i]) for i in cut_short]
            self._run_windows(alone, chunks, results, reached)
        self._decode_rest(chunks, results, reached)
        return results

    def _decode_rest(
        self, chunks: Sequence[Chunk], results: list[ChunkResult], reached: dict[int, float]
    ) -> None:
        """Decode what Whisper left of chunks it ended early (decoded alone).

        Whisper may close its text before the end of a 30 s window; a
        sequential pass (faster-whisper's ``transcribe``) seeks to the last
        timestamp and goes on from there. So does this, in batches, for every
        chunk that stopped more than ``REACH_SLACK_S`` short of its end.
        """
        current = {i: chunks[i] for i in reached}
        for _round in range(MAX_CONTINUATIONS):
            owners: list[int] = []
            rests: list[Chunk] = []
            for i, seconds in reached.items():
                chunk = current[i]
                if results[i].error is not None or seconds < MIN_STEP_S:
                    continue
                if chunk.duration - seconds <= REACH_SLACK_S:
                    continue
                rest = dataclasses.replace(
                    chunk,
                    samples=chunk.samples[int(seconds * SAMPLE_RATE) :],
                    offset=chunk.offset + seconds,
                    duration=chunk.duration - seconds,
                    packable=False,
                )
                owners.append(i)
                rests.append(rest)
                current[i] = rest
            if not rests:
                return
            logger.info("decoding the rest of %d chunks Whisper ended early", len(rests))
            parts = [ChunkResult() for _ in rests]
            reached_now: dict[int, float] = {}
            self._run_windows(
                [Window.of(k, rest) for k, rest in enumerate(rests)], rests, parts, reached_now
            )
            for k, i in enumerate(owners):
                if parts[k].error is None:
                    results[i].segments += parts[k].segments
            reached = {owners[k]: seconds for k, seconds in reached_now.items()}

    def _run_windows(
        self,
        windows: list[Window],
        chunks: Sequence[Chunk],
        results: list[ChunkResult],
        reached: dict[int, float],
    ) -> list[int]:
        """Decode windows into ``results``; return members a packed window did not reach.

        ``reached`` gets, for chunks decoded alone, the seconds Whisper's text covered.
        """
        # Word alignment (packed windows, or asked for) takes one tokenizer per call.
        groups: dict[tuple[int, bool, bool, str, str], list[Window]] = {}
        unreached: list[int] = []
        for window in windows:
            c = chunks[window.members[0]]
            aligned = window.packed or c.word_timestamps
            key = (
                (c.beam_size, window.packed, True, c.language, c.task)
                if aligned
                else (c.beam_size, False, False, "", "")
            )
            groups.setdefault(key, []).append(window)
        for (beam, packed, aligned, _lang, _task), group in groups.items():
            try:
                decoded = self._decode(group, chunks, beam, packed, aligned, reached)
            except Exception as exc:
                logger.warning(
                    "batch of %d windows failed (%s); decoding them one by one",
                    len(group),
                    type(exc).__name__,
                )
                decoded = {}
                for window in group:
                    try:
                        decoded |= self._decode([window], chunks, beam, packed, aligned, reached)
                    except Exception as alone:
                        for member in window.members:
                            results[member] = ChunkResult(
                                error=f"decoding failed ({type(alone).__name__})"
                            )
            for member, segments in decoded.items():
                results[member] = ChunkResult(segments=segments)
            unreached += [
                m for w in group for m in w.members if m not in decoded and results[m].error is None
            ]
        return unreached

    def _decode(
        self,
        windows: list[Window],
        chunks: Sequence[Chunk],
        beam_size: int,
        packed: bool,
        aligned: bool,
        reached: dict[int, float],
    ) -> dict[int, list[Segment]]:
        """One encode and one generate over ``windows``; segments per member chunk.

        ``aligned``: add word timestamps (always for packed windows). ``reached``:
        where each unpacked window's text ended (seconds from its start).
        """
        backend = self.backend
        first = [chunks[w.members[0]] for w in windows]
        encoded = backend.encode([w.samples for w in windows])
        generated = backend.generate(
            encoded,
            [c.prompt for c in first],
            beam_size=beam_size,
            max_length=self._max_length(windows, first) if packed else MAX_LENGTH,
        )
        per_window: list[list[dict[str, Any]]] = []
        for window, chunk, result in zip(windows, first, generated, strict=True):
            tokenizer = self._tokenizer(chunk.language, chunk.task)
            offset = 0.0 if packed else chunk.offset
            pieces, seconds = timing.split_by_timestamps(
                tokenizer,
                result.tokens,
                time_offset=offset,
                duration=float(np.ceil(window.duration)),
            )
            # Whisper may predict an end past its window: keep times inside it.
            last = offset + window.duration
            for piece in pieces:
                piece["start"] = min(max(piece["start"], offset), last)
                piece["end"] = min(max(piece["end"], offset), last)
                piece["text"] = tokenizer.decode(piece["tokens"])
                # Word times count from here, as the segment times do.
                piece["seek"] = offset
            per_window.append(pieces)
            if not packed:
                reached[window.members[0]] = seconds
        if not packed:
            if aligned:
                self._add_words(windows, first, per_window, encoded)
            return {
                w.members[0]: [
                    Segment(
                        id=0,
                        start=round(p["start"], 3),
                        end=round(p["end"], 3),
                        text=p["text"],
                        words=timed_words(p) if aligned else None,
                    )
                    for p in pieces
                    if p["text"].strip()
                ]
                for w, pieces in zip(windows, per_window, strict=True)
            }
        # A packed window that decoded into a repetition loop keeps what came
        # before the loop; split_words leaves out the clips it no longer
        # reaches, and they are decoded again.
        kept = [before_loop(pieces) for pieces in per_window]
        looped = sum(len(k) < len(p) for k, p in zip(kept, per_window, strict=True))
        if looped:
            logger.info("%d packed windows looped; their clips from the loop on go again", looped)
        self._add_words(windows, first, kept, encoded)
        out: dict[int, list[Segment]] = {}
        for window, pieces in zip(windows, kept, strict=True):
            out |= split_words(window, chunks, pieces)
        return out

    def _max_length(self, windows: list[Window], first: list[Chunk]) -> int:
        """A token budget for packed windows: a decoding loop stops early, speech does not."""
        longest = max(w.duration for w in windows)
        prompt = max(len(c.prompt) for c in first)
        return min(MAX_LENGTH, prompt + 16 + int(TOKENS_PER_SECOND * longest))

    def _add_words(
        self,
        windows: list[Window],
        first: list[Chunk],
        per_window: list[list[dict[str, Any]]],
        encoded: Any,
    ) -> None:
        """Word timestamps (cross-attention alignment) on the windows that have words."""
        spoken = [i for i, pieces in enumerate(per_window) if pieces]
        if not spoken:
            return
        tokenizer = self._tokenizer(first[spoken[0]].language, first[spoken[0]].task)
        texts = [
            [t for p in per_window[i] for t in p["tokens"] if t < tokenizer.eot] for i in spoken
        ]
        alignments = self.backend.align(
            encoded,
            spoken,
            tokenizer.sot_sequence,
            texts,
            [timing.frames(windows[i].duration) for i in spoken],
        )
        timing.add_words(
            [per_window[i] for i in spoken],
            tokenizer,
            alignments,
            [per_window[i][0]["seek"] for i in spoken],
        )
