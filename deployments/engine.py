"""The faster-whisper engine: plain Python, no Ray.

A job goes through three steps so that a deployment can batch the middle one
across jobs: ``prepare`` (decode, VAD, cut into <= 30 s chunks), ``run_batch``
(pack short jobs into shared windows, one encoder/decoder pass over windows of
any jobs) and ``assemble`` (put a job's results back on its own timeline).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.transcribe import get_compression_ratio

from deployments.audio import SAMPLE_RATE, AudioTooLong, decode, split_speech
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
# faster-whisper's own defaults for attaching punctuation to words.
_PUNCTUATION = {
    name: inspect.signature(WhisperModel.transcribe).parameters[name].default
    for name in ("prepend_punctuations", "append_punctuations")
}


def before_loop(pieces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A window's segments up to the first that repeats itself (a decoding loop).

    faster-whisper's test: text whose gzip compression ratio is over 2.4.
    If only the whole text fails it (a loop of short segments), nothing is kept.
    """
    for i, piece in enumerate(pieces):
        if get_compression_ratio(piece["text"]) > MAX_COMPRESSION_RATIO:
            return pieces[:i]
    if get_compression_ratio("".join(p["text"] for p in pieces)) > MAX_COMPRESSION_RATIO:
        return []
    return pieces


class WhisperEngine:
    """faster-whisper (CTranslate2) with batches that may mix jobs.

    faster-whisper's ``BatchedInferencePipeline`` batches the chunks of one file
    under one prompt. CTranslate2's ``generate`` takes one prompt per item, so
    here each window carries its own (language, task, initial prompt) and
    windows of many jobs share one encoder pass and one decoder call. Short
    jobs of one owner with the same options are packed into shared windows
    (deployments/packing.py).
    """

    def __init__(self, config: EngineConfig) -> None:
        from deployments.models import resolve_model

        self.max_audio_seconds = config.max_audio_seconds
        self.packing = Packing()
        path = resolve_model(config.model, cache_dir=config.cache_dir)
        compute_type = config.compute_type
        if compute_type == "auto":
            compute_type = "float16" if config.device == "cuda" else "int8"
        # Ray sets OMP_NUM_THREADS=1 in workers, and CTranslate2 reads it when
        # cpu_threads is 0: pass the count ourselves or decoding uses one core.
        threads = config.cpu_threads or os.cpu_count() or 1
        # On a CPU one batch keeps about 1.6 of 2 cores busy; two batches at
        # once (one model copy each) decode 22 + 10 clips in 3.8 s, against
        # 5.1 s one after the other and 4.1 s as one batch of 32.
        self.workers = config.workers or (1 if config.device == "cuda" else 2)
        self.model = WhisperModel(
            path,
            device=config.device,
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=self.workers,
        )
        self.multilingual = bool(self.model.model.is_multilingual)
        logger.info(
            "loaded model %s on %s (%s, %d threads, %d workers)",
            config.model,
            config.device,
            compute_type,
            threads,
            self.workers,
        )

    def _tokenizer(self, language: str, task: Task):  # type: ignore[no-untyped-def]
        from faster_whisper.tokenizer import Tokenizer

        return Tokenizer(self.model.hf_tokenizer, self.multilingual, task=task, language=language)

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
        tokenizer = self._tokenizer(language, options.task)
        previous = (
            tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
        )
        prompt = self.model.get_prompt(tokenizer, previous_tokens=previous)
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
            if requested not in self.model.supported_languages:
                raise AudioError(f"unknown language code {requested!r}")
            return requested
        if not pieces:
            return "en"
        language, _prob, _all = self.model.detect_language(features=self._features(pieces[0]))
        return str(language)

    def _features(self, samples: np.ndarray) -> np.ndarray:
        return np.asarray(pad_or_trim(self.model.feature_extractor(samples)[..., :-1]))

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
        model = self.model
        first = [chunks[w.members[0]] for w in windows]
        encoder_output = model.encode(np.stack([self._features(w.samples) for w in windows]))
        results = model.model.generate(
            encoder_output,
            [c.prompt for c in first],
            beam_size=beam_size,
            max_length=self._max_length(windows, first) if packed else model.max_length,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
            return_no_speech_prob=True,
        )
        per_window: list[list[dict[str, Any]]] = []
        for window, chunk, result in zip(windows, first, results, strict=True):
            tokenizer = self._tokenizer(chunk.language, chunk.task)
            offset = 0.0 if packed else chunk.offset
            pieces, seek, _single = model._split_segments_by_timestamps(
                tokenizer=tokenizer,
                tokens=result.sequences_ids[0],
                time_offset=offset,
                segment_size=int(np.ceil(window.duration) * model.frames_per_second),
                segment_duration=window.duration,
                seek=0,
            )
            # Whisper may predict an end past its window: keep times inside it.
            last = offset + window.duration
            for piece in pieces:
                piece["start"] = min(max(piece["start"], offset), last)
                piece["end"] = min(max(piece["end"], offset), last)
                piece["text"] = tokenizer.decode(piece["tokens"])
                # Word times count from here, as the segment times do.
                piece["seek"] = round(offset * model.frames_per_second)
            per_window.append(pieces)
            if not packed:
                reached[window.members[0]] = seek / model.frames_per_second
        if not packed:
            if aligned:
                self._add_words(windows, first, per_window, encoder_output)
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
        self._add_words(windows, first, kept, encoder_output)
        out: dict[int, list[Segment]] = {}
        for window, pieces in zip(windows, kept, strict=True):
            out |= split_words(window, chunks, pieces)
        return out

    def _max_length(self, windows: list[Window], first: list[Chunk]) -> int:
        """A token budget for packed windows: a decoding loop stops early, speech does not."""
        longest = max(w.duration for w in windows)
        prompt = max(len(c.prompt) for c in first)
        return min(self.model.max_length, prompt + 16 + int(TOKENS_PER_SECOND * longest))

    def _add_words(
        self,
        windows: list[Window],
        first: list[Chunk],
        per_window: list[list[dict[str, Any]]],
        encoder_output: Any,
    ) -> None:
        """Word timestamps for packed windows (cross-attention alignment)."""
        model = self.model
        spoken = [i for i, pieces in enumerate(per_window) if pieces]
        if not spoken:
            return
        if len(spoken) < len(windows):
            # Alignment needs one encoder output per window that has words.
            encoder_output = model.encode(
                np.stack([self._features(windows[i].samples) for i in spoken])
            )
        tokenizer = self._tokenizer(first[spoken[0]].language, first[spoken[0]].task)
        model.add_word_timestamps(
            [per_window[i] for i in spoken],
            tokenizer,
            encoder_output,
            [int(np.ceil(windows[i].duration) * model.frames_per_second) for i in spoken],
            _PUNCTUATION["prepend_punctuations"],
            _PUNCTUATION["append_punctuations"],
            0.0,
        )
