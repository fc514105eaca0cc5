"""A job's chunk results joined into its transcript, on the original audio's timeline."""

from __future__ import annotations

from collections.abc import Sequence

from deployments.interface import AudioError, ChunkResult, PreparedAudio
from deployments.protocol import Segment, Transcript, Word


def assemble(prepared: PreparedAudio, results: Sequence[ChunkResult]) -> Transcript:
    """Join a job's chunk results, in order, on the original audio's timeline.

    Times are monotonic and inside the audio whatever the decoding gave: each
    segment lies inside its chunk and starts where the one before ended or
    later; each word lies inside its segment and starts where the word before
    ended or later. (Whisper's timestamps of two passes over one chunk can
    overlap by a few hundredths, and a last word's alignment can reach past
    its chunk.)
    """
    for result in results:
        if result.error is not None:
            raise AudioError(result.error)
    layout = prepared.layout
    duration = round(layout.duration, 3)
    segments: list[Segment] = []
    last = 0.0
    for chunk, result in zip(prepared.chunks, results, strict=True):
        begin, stop = chunk.offset, chunk.offset + chunk.duration

        def inside(
            t: float, is_end: bool = False, begin: float = begin, stop: float = stop
        ) -> float:
            return min(layout.original_time(min(max(t, begin), stop), is_end=is_end), duration)

        for seg in result.segments:
            start = max(inside(seg.start), last)
            end = max(inside(seg.end, is_end=True), start)
            words = None
            if seg.words is not None:
                words = []
                at = start
                for w in seg.words:
                    w_start = min(max(inside(w.start), at), end)
                    w_end = min(max(inside(w.end, is_end=True), w_start), end)
                    words.append(
                        Word(word=w.word, start=w_start, end=w_end, probability=w.probability)
                    )
                    at = w_end
            segments.append(
                Segment(
                    id=len(segments),
                    start=start,
                    end=end,
                    text=seg.text,
                    words=words,
                    language=chunk.language if prepared.multilingual else None,
                )
            )
            last = end
    text = "".join(seg.text for seg in segments).strip()
    return Transcript(text=text, segments=segments, language=prepared.language, duration=duration)
