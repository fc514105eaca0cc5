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

from deployments.audio import SAMPLE_RATE, AudioTooLong, SpooledWindow, cut
from deployments.engines import registry, timing
from deployments.engines.contract import (
    MAX_LENGTH,
    TIME_PRECISION,
    Generated,
    WhisperBackend,
)
from deployments.engines.tokenizer import WhisperTokenizer
from deployments.engines.tokenizer import load as load_vocabulary
from deployments.interface import (
    AudioError,
    Chunk,
    ChunkResult,
    EngineConfig,
    Packing,
    PreparedAudio,
)
from deployments.packing import REACH_SLACK_S, Window, clip_segments, plan_windows, timed_words
from deployments.protocol import Segment, Task, TranscribeOptions

logger = logging.getLogger("ray.serve.whisper.engine")

# faster-whisper's threshold for text that repeats itself (a decoding loop).
MAX_COMPRESSION_RATIO = 2.4
# Token budget of a packed clip's decode: fast English speech with timestamps is about 5.
TOKENS_PER_SECOND = 5
# A decode of a short window that writes more than this many tokens a second of its
# audio, and LOOP_TOKENS more (rounded up to a multiple of 32; windows over 6.4 s keep
# faster-whisper's 224), is a loop: about twice the fastest speech in any language (CJK
# text takes 10-15 tokens a second). It is cut there and fails the fallback test, as its
# text decoded to the end would fail the compression test; a sampled loop of a 2.5 s clip
# used to run to 224 tokens times BEST_OF, several times plain's decode.
LOOP_TOKENS_PER_SECOND = 25
LOOP_TOKENS = 32
# faster-whisper's quality guards, with its defaults: a window whose text
# compresses too well (a loop) or is unlikely is decoded again at the next
# temperature; one that is probably not speech and unlikely gets no text.
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BEST_OF = 5
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# A segment this long that repeats earlier text word for word is a loop.
LOOP_WORDS = 5
# A chunk whose text ended early is decoded on from there, at most this many
# more times, and only if the last pass got at least this far (progress).
MAX_CONTINUATIONS = 4
MIN_STEP_S = 1.0


def before_loop(pieces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A window's segments up to the first that repeats itself (a decoding loop).

    faster-whisper's test: text whose gzip compression ratio is over 2.4; and
    a segment of at least ``LOOP_WORDS`` words that says again, word for word,
    what came before it (Whisper repeating a sentence into the silence after
    it; too short to fail the ratio test). If only the whole text fails the
    ratio test (a loop of short segments), nothing is kept.
    """
    said: list[str] = []
    for i, piece in enumerate(pieces):
        if timing.compression_ratio(piece["text"]) > MAX_COMPRESSION_RATIO:
            return pieces[:i]
        these = piece["text"].lower().split()
        if len(these) >= LOOP_WORDS and _contains(said, these):
            return pieces[:i]
        said += these
    if timing.compression_ratio("".join(p["text"] for p in pieces)) > MAX_COMPRESSION_RATIO:
        return []
    return pieces


def verdict(result: Generated, text: str, *, looped: bool = False) -> str:
    """faster-whisper's tests on one decode: "ok", "fallback" (try the next
    temperature) or "silent" (probably no speech: no text). ``looped``: the decode
    ran out of its window's loop budget (as a text that compresses too well)."""
    unlikely = result.avg_logprob < LOG_PROB_THRESHOLD
    if result.no_speech_prob > NO_SPEECH_THRESHOLD and unlikely:
        return "silent"
    if unlikely or looped or timing.compression_ratio(text) > MAX_COMPRESSION_RATIO:
        return "fallback"
    return "ok"


def token_budget(seconds: float, per_second: int, base: int) -> int:
    """New tokens for a decode of ``seconds`` of audio, in steps of 32 (decodes with
    like budgets share a call)."""
    return -(-(base + int(per_second * seconds)) // 32) * 32


def max_length(new: int, prompt: int) -> int:
    """CTranslate2's ``max_length`` (it counts the prompt, and gives at most half of it
    to new tokens) for at least ``new`` new tokens after a prompt of ``prompt``."""
    return min(MAX_LENGTH, max(2 * new, prompt + new))


def _contains(text: list[str], part: list[str]) -> bool:
    return any(text[i : i + len(part)] == part for i in range(len(text) - len(part) + 1))


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
        self.decoded_alone = 0
        """Packed clips decoded again alone, or handed back to be (not clear-cut)."""
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
            layout, windows = cut(
                io.BytesIO(audio),
                vad_filter=options.vad_filter,
                max_seconds=self.max_audio_seconds,
            )
        except AudioTooLong as exc:
            raise AudioError(f"{exc} (MAX_AUDIO_SECONDS)") from exc
        except Exception as exc:  # PyAV raises many types for bad input
            raise AudioError(f"could not decode the audio: {exc}") from exc
        language = self._language(options.language, windows[0] if windows else None)
        if not self.multilingual and options.task == "translate":
            raise AudioError("this model is English-only and cannot translate")
        # multilingual: every chunk (<= 30 s) in the language detected in it.
        each = options.multilingual and self.multilingual and options.language is None
        languages = [
            self._language(None, window) if each and k else language
            for k, window in enumerate(windows)
        ]
        chunks = [
            Chunk(
                audio=window,
                offset=offset,
                duration=duration,
                prompt=self._tokenizer(lang, options.task).prompt(
                    options.initial_prompt, options.hotwords
                ),
                language=lang,
                task=options.task,
                beam_size=options.beam_size,
                packable=len(windows) == 1 and options.pack,
                word_timestamps=options.word_timestamps,
            )
            for window, lang, (offset, duration) in zip(
                windows, languages, layout.windows, strict=True
            )
        ]
        return PreparedAudio(chunks=chunks, layout=layout, language=language, multilingual=each)

    def _language(self, requested: str | None, window: SpooledWindow | None) -> str:
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
        if window is None:
            return "en"
        return self.backend.detect_language(window.read())[0][0]

    def run_batch(self, chunks: Sequence[Chunk], *, alone_later: bool = False) -> list[ChunkResult]:
        """Decode chunks of any jobs; a failure marks its own chunks only.

        ``alone_later``: packed clips to decode again alone come back marked
        ``again_alone`` rather than decoded here, after the rest of the batch.
        """
        chunks = [chunk.loaded() for chunk in chunks]  # read once, held for this batch only
        results: list[ChunkResult] = [ChunkResult() for _ in chunks]
        windows = plan_windows(chunks, self.packing)
        if len(windows) < len(chunks):
            logger.info("packed %d chunks into %d windows", len(chunks), len(windows))
        reached: dict[int, float] = {}
        unsure = self._run_windows(windows, chunks, results, reached)
        if unsure:
            # A packed clip whose words were not clear-cut (clip_segments) is
            # decoded alone: only that decode's words are the job's.
            logger.info(
                "%d packed chunks to decode alone (%s)",
                len(unsure),
                "handed back" if alone_later else "now",
            )
            self.decoded_alone += len(unsure)
            if alone_later:
                for i in unsure:
                    results[i] = ChunkResult(again_alone=True)
            else:
                alone = [Window.of(i, chunks[i]) for i in unsure]
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
                tokenizer = self._tokenizer(chunk.language, chunk.task)
                said = tokenizer.encode("".join(s.text for s in results[i].segments))
                rest = dataclasses.replace(
                    chunk,
                    audio=chunk.samples[int(seconds * SAMPLE_RATE) :],
                    offset=chunk.offset + seconds,
                    duration=chunk.duration - seconds,
                    # What the chunk said so far is the previous text, as
                    # faster-whisper's condition_on_previous_text has it.
                    prompt=tokenizer.after(chunks[i].prompt, said),
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
        """Decode windows into ``results``; return packed members to decode alone.

        ``reached`` gets, for chunks decoded alone, the seconds Whisper's text covered.
        """
        # Packed windows and word alignment take one tokenizer per call.
        groups: dict[tuple[int, bool, bool, str, str], list[Window]] = {}
        unreached: list[int] = []
        for window in windows:
            c = chunks[window.members[0]]
            aligned = c.word_timestamps
            key = (
                (c.beam_size, window.packed, aligned, c.language, c.task)
                if aligned or window.packed
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
        if packed:
            return self._decode_packed(windows, chunks, beam_size, aligned)
        first = [chunks[w.members[0]] for w in windows]
        encoded = self.backend.encode([w.samples for w in windows])
        generated = self._generate_guarded(
            encoded,
            [c.prompt for c in first],
            [self._tokenizer(c.language, c.task) for c in first],
            beam_size,
            [w.duration for w in windows],
        )
        per_window: list[list[dict[str, Any]]] = []
        for window, chunk, result in zip(windows, first, generated, strict=True):
            tokenizer = self._tokenizer(chunk.language, chunk.task)
            pieces, seconds = self._segments(tokenizer, result.tokens, chunk.offset, window)
            per_window.append(pieces)
            reached[window.members[0]] = seconds
        if aligned:
            tokenizer = self._tokenizer(first[0].language, first[0].task)
            self._add_words(encoded, list(range(len(windows))), windows, per_window, tokenizer)
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

    def _generate_guarded(
        self,
        encoded: Any,
        prompts: list[list[int]],
        tokenizers: list[WhisperTokenizer],
        beam_size: int,
        seconds: list[float],
    ) -> list[Generated]:
        """Decode windows with faster-whisper's temperature fallback.

        Temperature 0 decodes the windows at once; each window it fails then tries
        the next temperatures in turn, drawing them all from one sampler of its own
        (backends sample a prompt at a time). Where all fail, the likeliest result
        that does not loop is kept, as faster-whisper does. A window the no-speech
        test finds silent comes back with no tokens. ``seconds``: each window's
        audio; a decode that outruns its loop budget (LOOP_TOKENS_PER_SECOND) is a
        loop.
        """
        chosen: list[Generated | None] = [None] * len(prompts)
        tried: list[list[tuple[Generated, bool]]] = [[] for _ in prompts]
        budgets = [
            min(MAX_LENGTH // 2, token_budget(s, LOOP_TOKENS_PER_SECOND, LOOP_TOKENS))
            for s in seconds
        ]

        def judge(i: int, result: Generated) -> bool:
            """Keep ``result`` for window ``i`` if it passes; say whether it did."""
            text = tokenizers[i].decode(result.tokens)
            looped = budgets[i] < MAX_LENGTH // 2 and len(result.tokens) >= budgets[i]
            not_looping = not looped and timing.compression_ratio(text) <= MAX_COMPRESSION_RATIO
            tried[i].append((result, not_looping))
            if verdict(result, text, looped=looped) == "fallback":
                return False
            chosen[i] = result
            return True

        first = self.backend.generate(
            encoded,
            prompts,
            beam_size=beam_size,
            max_length=max(max_length(b, len(p)) for b, p in zip(budgets, prompts, strict=True)),
            temperature=TEMPERATURES[0],
        )
        todo = [i for i, result in enumerate(first) if not judge(i, result)]
        if todo:
            logger.info("%d windows failed at temperature %.1f", len(todo), TEMPERATURES[0])
        unsolved = 0
        for i in todo:
            sampler = self.backend.sampler()
            for temperature in TEMPERATURES[1:]:
                [result] = self.backend.generate(
                    encoded,
                    [prompts[i]],
                    beam_size=beam_size,
                    max_length=max_length(budgets[i], len(prompts[i])),
                    rows=[i],
                    temperature=temperature,
                    best_of=BEST_OF,
                    sampler=sampler,
                )
                if judge(i, result):
                    break
            else:
                pool = [r for r, fine in tried[i] if fine] or [r for r, _ in tried[i]]
                chosen[i] = max(pool, key=lambda r: r.avg_logprob)
                unsolved += 1
        if unsolved:
            logger.info("%d windows failed at every temperature", unsolved)
        out: list[Generated] = []
        for kept, tokenizer in zip(chosen, tokenizers, strict=True):
            assert kept is not None
            silent = verdict(kept, tokenizer.decode(kept.tokens)) == "silent"
            out.append(dataclasses.replace(kept, tokens=[]) if silent else kept)
        return out

    def _decode_packed(
        self, windows: list[Window], chunks: Sequence[Chunk], beam_size: int, aligned: bool
    ) -> dict[int, list[Segment]]:
        """Packed windows: one encoder pass each, then one decode per clip that hears
        only that clip (deployments/packing.py). ``aligned``: add word timestamps.

        Clips left out of the answer are to be decoded alone, where
        faster-whisper's guards run whole: Whisper wrote nothing for them,
        looped, or failed the fallback or no-speech test.
        """
        encoded = self.backend.encode(
            [w.samples for w in windows], clips=[w.clips for w in windows]
        )
        first = chunks[windows[0].members[0]]
        tokenizer = self._tokenizer(first.language, first.task)
        rows = [(w, slot) for w in range(len(windows)) for slot in range(len(windows[w].members))]
        clips = [chunks[windows[w].members[slot]] for w, slot in rows]
        spans = [
            (windows[w].starts[slot], windows[w].starts[slot] + clip.duration)
            for (w, slot), clip in zip(rows, clips, strict=True)
        ]
        per_row: list[list[dict[str, Any]]] = [[] for _ in rows]
        # Whisper may close its text before the end of the clip (two timestamps
        # and the end): as a sequential pass would, decode on from there, with
        # the clip's text so far as the previous text.
        at = [start for start, _ in spans]
        prompts = [clip.prompt for clip in clips]
        guarded: set[int] = set()
        todo = list(range(len(rows)))
        for _round in range(1 + MAX_CONTINUATIONS):
            if not todo:
                break
            generated = self._generate_from(
                encoded,
                [rows[k][0] for k in todo],
                [prompts[k] for k in todo],
                [(at[k], spans[k][1]) for k in todo],
                beam_size,
                tokenizer,
            )
            going_on = []
            for k, result in zip(todo, generated, strict=True):
                tokens = result.tokens
                if verdict(result, tokenizer.decode(tokens)) != "ok":
                    guarded.add(k)  # the fallback and the no-speech test: alone
                    continue
                pieces, seconds = self._segments(tokenizer, tokens, 0.0, windows[rows[k][0]])
                per_row[k] += pieces
                if at[k] + MIN_STEP_S <= seconds < spans[k][1] - REACH_SLACK_S:
                    at[k] = seconds
                    going_on.append(k)
                    text = [t for p in pieces for t in p["tokens"]]
                    prompts[k] = tokenizer.after(prompts[k], text)
            todo = going_on
        if aligned:
            self._add_words(
                encoded,
                [w for w, _ in rows],
                [windows[w] for w, _ in rows],
                per_row,
                tokenizer,
                spans,
            )
        out: dict[int, list[Segment]] = {}
        for k, ((w, slot), clip, pieces) in enumerate(zip(rows, clips, per_row, strict=True)):
            spoken = [p for p in pieces if p["text"].strip()]
            if k not in guarded and spoken and len(before_loop(spoken)) == len(spoken):
                out[windows[w].members[slot]] = clip_segments(
                    windows[w].starts[slot], clip, spoken, aligned
                )
        return out

    def _generate_from(
        self,
        encoded: Any,
        rows: list[int],
        prompts: list[list[int]],
        spans: list[tuple[float, float]],
        beam_size: int,
        tokenizer: WhisperTokenizer,
    ) -> list[Generated]:
        """Decode encoder windows ``rows``, each hearing only its span (a clip, or
        what is left of it) and starting at the span's start (the prompt ends with
        that timestamp); decodes with like token budgets go together.
        """
        budgets: dict[int, list[int]] = {}
        for k, (start, end) in enumerate(spans):
            budgets.setdefault(token_budget(end - start, TOKENS_PER_SECOND, 16), []).append(k)
        out: list[Generated] = [Generated(tokens=[]) for _ in rows]
        for new, members in budgets.items():
            starting = [
                [*prompts[k], tokenizer.timestamp_begin + round(spans[k][0] / TIME_PRECISION)]
                for k in members
            ]
            longest = max(len(p) for p in starting)
            generated = self.backend.generate(
                encoded,
                starting,
                beam_size=beam_size,
                max_length=max_length(new, longest),
                rows=[rows[k] for k in members],
                spans=[spans[k] for k in members],
            )
            for k, result in zip(members, generated, strict=True):
                out[k] = result
        return out

    def _segments(
        self, tokenizer: WhisperTokenizer, tokens: list[int], offset: float, window: Window
    ) -> tuple[list[dict[str, Any]], float]:
        """A decode's segments (times from ``offset``, inside the window) and how far it read."""
        pieces, seconds = timing.split_by_timestamps(
            tokenizer, tokens, time_offset=offset, duration=float(np.ceil(window.duration))
        )
        # Whisper may predict an end past its window: keep times inside it.
        last = offset + window.duration
        for piece in pieces:
            piece["start"] = min(max(piece["start"], offset), last)
            piece["end"] = min(max(piece["end"], offset), last)
            piece["text"] = tokenizer.decode(piece["tokens"])
            # Word times count from here, as the segment times do.
            piece["seek"] = offset
        return pieces, seconds

    def _add_words(
        self,
        encoded: Any,
        rows: list[int],
        windows: list[Window],
        per_row: list[list[dict[str, Any]]],
        tokenizer: WhisperTokenizer,
        spans: list[tuple[float, float]] | None = None,
    ) -> None:
        """Word timestamps (cross-attention alignment) on the decodes that have words.

        Decode ``k`` read encoder window ``rows[k]`` (``windows[k]``), hearing
        only ``spans[k]`` of it where given (a packed clip's decode).
        """
        spoken = [k for k, pieces in enumerate(per_row) if pieces]
        if not spoken:
            return
        texts = [[t for p in per_row[k] for t in p["tokens"] if t < tokenizer.eot] for k in spoken]
        alignments = self.backend.align(
            encoded,
            [rows[k] for k in spoken],
            tokenizer.sot_sequence,
            texts,
            [timing.frames(windows[k].duration if spans is None else spans[k][1]) for k in spoken],
            None if spans is None else [spans[k] for k in spoken],
        )
        timing.add_words(
            [per_row[k] for k in spoken],
            tokenizer,
            alignments,
            [per_row[k][0]["seek"] for k in spoken],
        )
