"""The CTranslate2 engine: faster-whisper loads the model and computes features;
CTranslate2's ``Whisper`` encodes, generates (one prompt per window) and aligns."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim

from deployments.engines.contract import Alignment, Generated, Loaded

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
        self.languages = tuple(self.model.supported_languages) if self.multilingual else ("en",)
        self.tokenizer_json = str(Path(path) / "tokenizer.json")
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

    def encode(self, windows: Sequence[np.ndarray]) -> CT2Encoded:
        features = self._features(windows)
        return CT2Encoded(self.model.encode(features), features)

    def generate(
        self, encoded: Any, prompts: Sequence[list[int]], *, beam_size: int, max_length: int
    ) -> list[Generated]:
        results = self.model.model.generate(
            encoded.output,
            list(prompts),
            beam_size=beam_size,
            max_length=max_length,
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
            return_no_speech_prob=True,
        )
        return [
            Generated(
                tokens=list(r.sequences_ids[0]),
                avg_logprob=float(r.scores[0]) if r.scores else 0.0,
                no_speech_prob=float(r.no_speech_prob),
            )
            for r in results
        ]

    def align(
        self,
        encoded: Any,
        indices: Sequence[int],
        start_sequence: list[int],
        text_tokens: Sequence[list[int]],
        num_frames: Sequence[int],
    ) -> list[Alignment]:
        output = encoded.output
        if list(indices) != list(range(encoded.features.shape[0])):
            output = self.model.encode(encoded.features[list(indices)])
        results = self.model.model.align(
            output, start_sequence, list(text_tokens), list(num_frames), median_filter_width=7
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
