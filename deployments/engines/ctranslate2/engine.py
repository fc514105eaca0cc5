"""The CTranslate2 engine: faster-whisper loads the model and computes features;
CTranslate2's ``Whisper`` encodes, generates (one prompt per window) and aligns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim

from deployments.engines.contract import (
    FRAMES_PER_SECOND,
    SAMPLE_RATE,
    SAMPLING_SEED,
    WINDOW_S,
    Alignment,
    Generated,
    Loaded,
    silenced,
    window_features,
)

if TYPE_CHECKING:
    from deployments.interface import EngineConfig


@dataclass
class CT2Encoded:
    output: Any
    """CTranslate2's encoder output (a StorageView)."""
    features: np.ndarray
    """Kept so a subset of windows can be encoded again for alignment (CTranslate2
    aligns a whole encoder batch)."""


class CTranslate2Whisper:
    """faster-whisper's CTranslate2 model, driven window batch by window batch."""

    def __init__(self, config: EngineConfig, *, why: str = "") -> None:
        from deployments.models import resolve_model

        path = resolve_model(config.model, cache_dir=config.cache_dir)
        compute_type = config.compute_type
        if compute_type == "auto":
            compute_type = "float16" if config.device == "cuda" else "int8"
        # Ray sets OMP_NUM_THREADS=1 in workers, and CTranslate2 reads it when
        # cpu_threads is 0: pass the count ourselves or decoding uses one core
        # (and see registry.load, which sets OMP_NUM_THREADS before the import).
        threads = config.threads
        # On a CPU one batch keeps about 1.6 of 2 cores busy; two batches at
        # once (one model copy each) decode 22 + 10 clips in 3.8 s, against
        # 5.1 s one after the other and 4.1 s as one batch of 32.
        self.workers = config.workers or (1 if config.device == "cuda" else 2)
        self._path, self._device, self._compute_type = str(path), config.device, compute_type
        self._threads = threads
        self.model = WhisperModel(
            path,
            device=config.device,
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=self.workers,
        )
        self.multilingual = bool(self.model.model.is_multilingual)
        self.languages = tuple(self.model.supported_languages) if self.multilingual else ("en",)
        self.tokenizer_json = str(Path(path) / "tokenizer.json")
        self._sot = int(self.model.hf_tokenizer.token_to_id("<|startoftranscript|>"))
        self.loaded = Loaded(
            engine="ctranslate2",
            device=config.device,
            dtype=f"{compute_type}, {threads} threads, {self.workers} workers",
            why=why,
        )

    def _features(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(
            [np.asarray(pad_or_trim(self.model.feature_extractor(w)[..., :-1])) for w in windows]
        )

    def encode(
        self,
        windows: Sequence[np.ndarray],
        *,
        clips: Sequence[Sequence[tuple[int, int]] | None] | None = None,
    ) -> CT2Encoded:
        features = window_features(self._features, windows, clips)
        return CT2Encoded(self.model.encode(features), features)

    def _windows(
        self,
        encoded: CT2Encoded,
        rows: Sequence[int],
        spans: Sequence[tuple[float, float]] | None = None,
    ) -> Any:
        """The encoder output of windows ``rows`` (repeats allowed), as a new batch;
        with ``spans``, each row hears only its span (contract.silenced)."""
        if spans is None and list(rows) == list(range(encoded.features.shape[0])):
            return encoded.output
        if encoded.output.device != "cpu":
            # A GPU StorageView has no host view: encode those windows again,
            # each with its features outside its span blanked (padding).
            features = encoded.features[list(rows)].copy()
            for k, (start, end) in enumerate(spans or []):
                features[k, :, : round(start * FRAMES_PER_SECOND)] = 0.0
                features[k, :, round(end * FRAMES_PER_SECOND) :] = 0.0
            return self.model.encode(features)
        import ctranslate2

        states = np.asarray(encoded.output)[list(rows)]
        if spans is not None:
            states = silenced(states, self._silence(), spans)
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(states))

    @cache  # noqa: B019 - once, for the model's life
    def _silence(self) -> np.ndarray:
        """The encoder's states for 30 s of silence."""
        silent = np.zeros(WINDOW_S * SAMPLE_RATE, dtype=np.float32)
        return np.asarray(self.model.encode(self._features([silent])))[0]

    def generate(
        self,
        encoded: Any,
        prompts: Sequence[list[int]],
        *,
        beam_size: int,
        max_length: int,
        rows: Sequence[int] | None = None,
        spans: Sequence[tuple[float, float]] | None = None,
        temperature: float = 0.0,
        best_of: int = 5,
        sampler: Any = None,
    ) -> list[Generated]:
        sampling = (
            {"beam_size": 1, "num_hypotheses": best_of, "sampling_topk": 0,
             "sampling_temperature": temperature}
            if temperature > 0
            else {"beam_size": beam_size}
        )  # fmt: skip
        windows = list(range(len(prompts))) if rows is None else list(rows)
        if temperature > 0 and len(prompts) > 1:
            # Each prompt samples on its own, from the sampler or a fresh one: the
            # same audio gives the same text whatever it is batched with.
            return [
                self.generate(
                    encoded,
                    [prompt],
                    beam_size=beam_size,
                    max_length=max_length,
                    rows=[windows[i]],
                    spans=None if spans is None else [spans[i]],
                    temperature=temperature,
                    best_of=best_of,
                    sampler=sampler,
                )[0]
                for i, prompt in enumerate(prompts)
            ]
        model = (sampler or self.sampler()) if temperature > 0 else self.model.model
        # CTranslate2 decodes together only prompts whose start token is at the
        # same place (as much previous text): one call per such group.
        groups: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(prompt.index(self._sot), []).append(i)
        results: list[Any] = [None] * len(prompts)
        for members in groups.values():
            decoded = model.generate(
                self._windows(
                    encoded,
                    [windows[i] for i in members],
                    None if spans is None else [spans[i] for i in members],
                ),
                [prompts[i] for i in members],
                max_length=max_length,
                **sampling,
                suppress_blank=True,
                suppress_tokens=[-1],
                return_scores=True,
                return_no_speech_prob=True,
            )
            for i, result in zip(members, decoded, strict=True):
                results[i] = result
        return [
            Generated(
                tokens=list(r.sequences_ids[0]),
                # CTranslate2's score is the mean log probability (length penalty 1).
                avg_logprob=float(r.scores[0])
                * len(r.sequences_ids[0])
                / (len(r.sequences_ids[0]) + 1)
                if r.scores
                else 0.0,
                no_speech_prob=float(r.no_speech_prob),
            )
            for r in results
        ]

    def sampler(self) -> Any:
        """A model to sample one window's fallback with, its generator at SAMPLING_SEED.

        CTranslate2 seeds each thread's generator once, at its first draw
        (``set_random_seed`` reaches only threads that have not drawn yet), and
        decodes on its worker threads: with the shared model a window's sample
        depended on what was sampled before it (3 different texts in 6 calls). So
        on a CPU a window's stream is a model copy with one worker thread of its
        own, about 0.17 s of CPU (tiny.en), once a window that falls back: its
        temperatures draw on from it. On CUDA, where a copy of a large model costs
        seconds and memory, the shared model samples (not reproducible).
        """
        import ctranslate2

        if self._device != "cpu":
            return self.model.model
        ctranslate2.set_random_seed(SAMPLING_SEED)
        return ctranslate2.models.Whisper(
            self._path,
            device="cpu",
            compute_type=self._compute_type,
            intra_threads=self._threads,
            inter_threads=1,
        )

    def align(
        self,
        encoded: Any,
        indices: Sequence[int],
        start_sequence: list[int],
        text_tokens: Sequence[list[int]],
        num_frames: Sequence[int],
        spans: Sequence[tuple[float, float]] | None = None,
    ) -> list[Alignment]:
        results = self.model.model.align(
            self._windows(encoded, indices, spans),
            start_sequence,
            list(text_tokens),
            list(num_frames),
            median_filter_width=7,
        )
        return [
            Alignment(
                text_indices=np.array([pair[0] for pair in r.alignments], dtype=np.int64),
                time_indices=np.array([pair[1] for pair in r.alignments], dtype=np.int64),
                token_probs=list(r.text_token_probs),
            )
            for r in results
        ]

    def detect_language(self, samples: np.ndarray) -> list[tuple[str, float]]:
        features = self._features([samples])[0]
        _language, _prob, ranked = self.model.detect_language(features=features)
        return [(str(code), float(p)) for code, p in ranked]
