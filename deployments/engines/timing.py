"""From decoded tokens to timed segments and words; the same for every engine.

Whisper's rules as openai-whisper and faster-whisper apply them: segments
between timestamp tokens; words from a DTW path through the alignment heads'
cross-attention; punctuation merged into its word; overlong words at pauses
trimmed to the median word length.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from deployments.engines.contract import (
    ALIGN_FRAMES_PER_SECOND,
    FRAMES_PER_SECOND,
    TIME_PRECISION,
    Alignment,
)
from deployments.engines.tokenizer import WhisperTokenizer

# faster-whisper's defaults for attaching punctuation to words.
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"  # noqa: RUF001
_SENTENCE_END = ".。!！?？"  # noqa: RUF001
MEDIAN_FILTER_WIDTH = 7


def compression_ratio(text: str) -> float:
    """How well text compresses: over 2.4 is a decoding loop (faster-whisper's test)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def split_by_timestamps(
    tokenizer: WhisperTokenizer, tokens: list[int], *, time_offset: float, duration: float
) -> tuple[list[dict[str, Any]], float]:
    """Segments between pairs of timestamp tokens, and how far the text reached (seconds).

    A window that ends on a lone timestamp was read to its end; otherwise the
    text after the last pair is unfinished and a sequential pass would go on
    from the last timestamp.
    """
    begin = tokenizer.timestamp_begin
    single_ending = len(tokens) >= 2 and tokens[-2] < begin <= tokens[-1]
    cuts = [i for i in range(1, len(tokens)) if tokens[i] >= begin and tokens[i - 1] >= begin]
    segments: list[dict[str, Any]] = []
    if cuts:
        if single_ending:
            cuts.append(len(tokens))
        last = 0
        for cut in cuts:
            piece = tokens[last:cut]
            segments.append(
                {
                    "start": time_offset + (piece[0] - begin) * TIME_PRECISION,
                    "end": time_offset + (piece[-1] - begin) * TIME_PRECISION,
                    "tokens": piece,
                }
            )
            last = cut
        reached = duration if single_ending else (tokens[last - 1] - begin) * TIME_PRECISION
        return segments, reached
    end = duration
    stamps = [t for t in tokens if t >= begin]
    if stamps and stamps[-1] != begin:
        end = (stamps[-1] - begin) * TIME_PRECISION
    # A decode that started mid-window opens with that timestamp.
    start = (tokens[0] - begin) * TIME_PRECISION if tokens and tokens[0] >= begin else 0.0
    segments.append({"start": time_offset + start, "end": time_offset + end, "tokens": tokens})
    return segments, duration


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over the last axis in windows of ``width``, edges reflected."""
    if width <= 1 or x.shape[-1] <= width // 2:
        return x
    pad = width // 2
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.median(windows, axis=-1)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest monotonic path through ``cost`` (tokens x frames), by anti-diagonals."""
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    total[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        options = np.stack([total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]])
        step = np.argmin(options, axis=0)
        total[i, j] = cost[i - 1, j - 1] + options[step, np.arange(i.size)]
        trace[i, j] = step
    trace[0, :] = 2
    trace[:, 0] = 1
    path_i: list[int] = []
    path_j: list[int] = []
    i, j = n, m
    while i > 0 or j > 0:
        path_i.append(i - 1)
        path_j.append(j - 1)
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    return np.array(path_i[::-1]), np.array(path_j[::-1])


def alignment_from_attention(
    weights: np.ndarray, token_probs: list[float], num_frames: int, start_length: int
) -> Alignment:
    """DTW over alignment heads' cross-attention logits (heads x tokens x positions).

    ``weights`` are pre-softmax; the rows are the decoder inputs
    [start..., <|notimestamps|>, text..., <|endoftext|>].
    """
    weights = weights[:, :, : num_frames // 2].astype(np.float64)
    weights = np.exp(weights - weights.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    weights = (weights - mean) / np.maximum(std, 1e-12)
    matrix = median_filter(weights, MEDIAN_FILTER_WIDTH).mean(axis=0)
    matrix = matrix[start_length:-1]
    text_indices, time_indices = dtw(-matrix)
    return Alignment(text_indices=text_indices, time_indices=time_indices, token_probs=token_probs)


def words_of(
    tokenizer: WhisperTokenizer, text_tokens: list[int], alignment: Alignment
) -> list[dict[str, Any]]:
    """Words with times (seconds from the window's start) and mean token probability."""
    words, word_tokens = tokenizer.split_to_word_tokens([*text_tokens, tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(alignment.text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = alignment.time_indices[jumps] / ALIGN_FRAMES_PER_SECOND
    probs = alignment.token_probs
    return [
        {
            "word": word,
            "tokens": tokens,
            "start": float(jump_times[i]),
            "end": float(jump_times[j]),
            "probability": float(np.mean(probs[i:j])) if j > i else 0.0,
        }
        for word, tokens, i, j in zip(
            words, word_tokens, boundaries[:-1], boundaries[1:], strict=False
        )
    ]


def merge_punctuations(words: list[dict[str, Any]]) -> None:
    """Attach opening punctuation to the next word and closing punctuation to the last."""
    i, j = len(words) - 2, len(words) - 1
    while i >= 0:
        before, after = words[i], words[j]
        if before["word"].startswith(" ") and before["word"].strip() in PREPEND_PUNCTUATIONS:
            after["word"] = before["word"] + after["word"]
            after["tokens"] = before["tokens"] + after["tokens"]
            before["word"], before["tokens"] = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(words):
        before, after = words[i], words[j]
        if not before["word"].endswith(" ") and after["word"] in APPEND_PUNCTUATIONS:
            before["word"] += after["word"]
            before["tokens"] = before["tokens"] + after["tokens"]
            after["word"], after["tokens"] = "", []
        else:
            i = j
        j += 1


def add_words(
    windows: Sequence[list[dict[str, Any]]],
    tokenizer: WhisperTokenizer,
    alignments: Sequence[Alignment],
    time_offsets: Sequence[float],
) -> None:
    """Put timed words on each window's segments (``segment["words"]``), in place.

    ``alignments[k]`` aligns the text tokens of all of window k's segments.
    Word times count from ``time_offsets[k]``, as the segment times do.
    """
    last_speech = 0.0
    for segments, alignment, offset in zip(windows, alignments, time_offsets, strict=True):
        text = [t for s in segments for t in s["tokens"] if t < tokenizer.eot]
        timed = words_of(tokenizer, text, alignment)
        durations = np.array([w["end"] - w["start"] for w in timed])
        durations = durations[durations.nonzero()]
        median = min(0.7, float(np.median(durations))) if durations.size else 0.0
        longest = median * 2
        if durations.size:
            for k in range(1, len(timed)):
                if timed[k]["end"] - timed[k]["start"] > longest:
                    if timed[k]["word"] in _SENTENCE_END:
                        timed[k]["end"] = timed[k]["start"] + longest
                    elif timed[k - 1]["word"] in _SENTENCE_END:
                        timed[k]["start"] = timed[k]["end"] - longest
        merge_punctuations(timed)
        index = 0
        for segment in segments:
            count = sum(1 for t in segment["tokens"] if t < tokenizer.eot)
            used = 0
            words: list[dict[str, Any]] = []
            while index < len(timed) and used < count:
                w = timed[index]
                if w["word"]:
                    words.append(
                        {
                            "word": w["word"],
                            "start": round(offset + w["start"], 2),
                            "end": round(offset + w["end"], 2),
                            "probability": w["probability"],
                        }
                    )
                used += len(w["tokens"])
                index += 1
            if words:
                last_speech = _trim_edges(segment, words, median, longest, last_speech)
            segment["words"] = words


def _trim_edges(
    segment: dict[str, Any],
    words: list[dict[str, Any]],
    median: float,
    longest: float,
    last_speech: float,
) -> float:
    """Keep the first and last words from stretching over a pause; return the segment's end."""
    first = words[0]
    if first["end"] - last_speech > median * 4 and (
        first["end"] - first["start"] > longest
        or (len(words) > 1 and words[1]["end"] - first["start"] > longest * 2)
    ):
        if len(words) > 1 and words[1]["end"] - words[1]["start"] > longest:
            boundary = max(words[1]["end"] / 2, words[1]["end"] - longest)
            first["end"] = words[1]["start"] = boundary
        first["start"] = max(0, first["end"] - longest)
    if segment["start"] < first["end"] and segment["start"] - 0.5 > first["start"]:
        first["start"] = max(0, min(first["end"] - median, segment["start"]))
    else:
        segment["start"] = first["start"]
    last = words[-1]
    if segment["end"] > last["start"] and segment["end"] + 0.5 < last["end"]:
        last["end"] = max(last["start"] + median, segment["end"])
    else:
        segment["end"] = last["end"]
    return float(segment["end"])


def frames(duration: float) -> int:
    """Mel frames of a window ``duration`` seconds long (rounded up to whole seconds)."""
    return int(np.ceil(duration) * FRAMES_PER_SECOND)
