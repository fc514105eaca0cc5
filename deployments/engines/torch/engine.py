"""The torch engine: Whisper in PyTorch, windows of many jobs decoded as one batch.

transformers supplies the network (``WhisperForConditionalGeneration``, SDPA
attention); decoding is ours, because every window carries its own prompt
(language, task, initial prompt), as CTranslate2's ``generate`` allows and
transformers' ``generate`` does not. The rules are Whisper's, as CTranslate2
applies them: the model's suppressed tokens, blank and end suppressed at the
first step, timestamps in pairs and never decreasing, the first one at most
1 s in, a timestamp forced when timestamps together outweigh any text token.
fp16 (or bf16) on CUDA, fp32 on CPU.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration
from transformers.audio_utils import mel_filter_bank
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from deployments.engines import timing
from deployments.engines.contract import (
    N_FRAMES,
    SAMPLE_RATE,
    SAMPLING_SEED,
    WINDOW_S,
    Alignment,
    Generated,
    Loaded,
    silenced,
    window_features,
)
from deployments.engines.tokenizer import load as load_tokenizer
from deployments.engines.torch.weights import PACKED, unpack_int8

logger = logging.getLogger("ray.serve.whisper.engine")

N_FFT = 400
HOP = 160
MAX_INITIAL_TIMESTAMP_INDEX = 50
"""The first timestamp is at most 1.0 s (50 x 0.02 s) into a window."""


@dataclass
class TorchEncoded:
    hidden: torch.Tensor
    """Encoder output, windows x 1500 x d_model, on the engine's device."""


class TorchWhisper:
    """A Whisper model folder (transformers layout) decoded with PyTorch."""

    def __init__(
        self,
        folder: str | Path,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        threads: int = 0,
        why: str = "",
        model: WhisperForConditionalGeneration | None = None,
    ) -> None:
        """Load ``folder`` (weights, ``tokenizer.json``, generation settings).

        ``model``: use this network instead of the folder's weights (a benchmark's
        randomly initialized large model; the folder still supplies the tokens).
        """
        folder = Path(folder)
        if device == "cpu" and threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.dtype = _dtype(dtype, self.device)
        self.model = (
            model.to(device=self.device, dtype=self.dtype).eval()  # type: ignore[call-arg]
            if model is not None
            else _load_model(folder, self.device, self.dtype)
        )
        config = self.model.config
        self.n_mels = int(config.num_mel_bins)
        self.vocab_size = int(config.vocab_size)
        self.multilingual = self.vocab_size >= 51865
        extra = _generation_settings(folder)
        self.alignment_heads: list[tuple[int, int]] = [
            (int(layer), int(head)) for layer, head in extra["alignment_heads"]
        ]
        self.suppress = [t for t in extra["suppress_tokens"] if 0 <= t < self.vocab_size]
        self.suppress_begin = [t for t in extra["begin_suppress_tokens"] if t < self.vocab_size]
        self.lang_ids = [int(t) for t in extra["lang_ids"]]
        self.tokenizer_json = str(folder / "tokenizer.json")
        vocabulary = load_tokenizer(self.tokenizer_json)
        self.languages = (
            tuple(str(vocabulary.id_to_token(t))[2:-2] for t in self.lang_ids)
            if self.multilingual
            else ("en",)
        )
        self._special = {
            name: _token_id(vocabulary, token)
            for name, token in {
                "sot": "<|startoftranscript|>",
                "eot": "<|endoftext|>",
                "no_timestamps": "<|notimestamps|>",
            }.items()
        }
        no_speech = vocabulary.token_to_id("<|nospeech|>")
        self.no_speech = (
            int(no_speech) if no_speech is not None else _token_id(vocabulary, "<|nocaptions|>")
        )
        self.workers = 1
        filters = mel_filter_bank(
            num_frequency_bins=1 + N_FFT // 2,
            num_mel_filters=self.n_mels,
            min_frequency=0.0,
            max_frequency=SAMPLE_RATE / 2,
            sampling_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        )
        self._filters = torch.from_numpy(np.asarray(filters, dtype=np.float32).T).to(self.device)
        self._window = torch.hann_window(N_FFT, device=self.device)
        self._align_lock = threading.Lock()
        self._rules = _TimestampRules(self)
        self.loaded = Loaded(
            engine="torch",
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            why=why,
        )

    # -- features and encoder ------------------------------------------------

    @torch.inference_mode()
    def features(self, windows: Sequence[np.ndarray]) -> torch.Tensor:
        """Log-mel features as faster-whisper computes them: windows x mels x 3000.

        Each window's own frames are normalized by its own loudest frame; the
        frames after its end are zeros (faster-whisper pads features, not audio).
        """
        width = WINDOW_S * SAMPLE_RATE + HOP
        batch = torch.zeros((len(windows), width), dtype=torch.float32)
        lengths = []
        for i, samples in enumerate(windows):
            piece = torch.from_numpy(np.asarray(samples[: WINDOW_S * SAMPLE_RATE], np.float32))
            batch[i, : piece.shape[0]] = piece
            lengths.append(piece.shape[0])
        batch = batch.to(self.device)
        stft = torch.stft(batch, N_FFT, HOP, window=self._window, return_complex=True)
        power = stft[..., :-1].abs() ** 2
        log_spec = torch.clamp(self._filters @ power, min=1e-10).log10()[..., :N_FRAMES]
        frames = torch.tensor([n // HOP for n in lengths], device=self.device)
        valid = torch.arange(N_FRAMES, device=self.device)[None, :] < frames[:, None]
        loudest = log_spec.masked_fill(~valid[:, None, :], -torch.inf).amax(dim=(1, 2))
        log_spec = torch.maximum(log_spec, (loudest - 8.0)[:, None, None])
        return torch.where(valid[:, None, :], (log_spec + 4.0) / 4.0, 0.0)

    @torch.inference_mode()
    def encode(
        self,
        windows: Sequence[np.ndarray],
        *,
        clips: Sequence[Sequence[tuple[int, int]] | None] | None = None,
    ) -> TorchEncoded:
        features = window_features(self.features, windows, clips)
        features = features.to(self.dtype)
        return TorchEncoded(self.model.model.encoder(features).last_hidden_state)

    # -- decoding --------------------------------------------------------------

    @torch.inference_mode()
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
        hidden = self._heard(
            encoded, list(range(len(prompts))) if rows is None else list(rows), spans
        )
        if temperature <= 0:
            return self._decode_groups(hidden, list(prompts), beam_size, max_length, 0.0)
        if len(prompts) > 1:  # each prompt samples on its own, from the sampler or a fresh one
            return [
                self.generate(
                    TorchEncoded(hidden[i : i + 1]),
                    [prompt],
                    beam_size=beam_size,
                    max_length=max_length,
                    temperature=temperature,
                    best_of=best_of,
                    sampler=sampler,
                )[0]
                for i, prompt in enumerate(prompts)
            ]
        # best_of samples of each prompt, the likeliest kept.
        samples = self._decode_groups(
            hidden.repeat_interleave(best_of, dim=0),
            [p for p in prompts for _ in range(best_of)],
            1,
            max_length,
            temperature,
            sampler or self.sampler(),
        )
        return [
            max(samples[i * best_of : (i + 1) * best_of], key=lambda g: g.avg_logprob)
            for i in range(len(prompts))
        ]

    def _decode_groups(
        self,
        hidden: torch.Tensor,
        prompts: list[list[int]],
        beam_size: int,
        max_length: int,
        temperature: float,
        sampler: torch.Generator | None = None,
    ) -> list[Generated]:
        """Decode prompt ``i`` over ``hidden[i]``, prompts of one length together."""
        results: list[Generated | None] = [None] * len(prompts)
        # Prompts decode together when they are as long: positions are absolute,
        # so shorter prompts would need padding the model never saw.
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault((len(prompt), prompt[-1] >= self._rules.begin), []).append(i)
        for members in groups.values():
            decoded = self._generate(
                hidden[members],
                [prompts[i] for i in members],
                beam_size,
                max_length,
                temperature,
                sampler,
            )
            for i, result in zip(members, decoded, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    def _heard(
        self, encoded: Any, rows: list[int], spans: Sequence[tuple[float, float]] | None
    ) -> torch.Tensor:
        """Encoder states of windows ``rows``, each silenced outside its span (contract)."""
        if spans is None:
            whole = rows == list(range(encoded.hidden.shape[0]))
            return encoded.hidden if whole else encoded.hidden[rows]
        return silenced(encoded.hidden[rows].clone(), self._silence(), spans)

    def sampler(self) -> torch.Generator:
        """One window's random stream for the temperature fallback (contract)."""
        return torch.Generator(device=self.device).manual_seed(SAMPLING_SEED)

    @cache  # noqa: B019 - once, for the model's life
    def _silence(self) -> torch.Tensor:
        """The encoder's states for 30 s of silence."""
        return self.encode([np.zeros(WINDOW_S * SAMPLE_RATE, dtype=np.float32)]).hidden[0]

    @torch.inference_mode()
    def decoder_step(
        self, tokens: torch.Tensor, hidden: torch.Tensor, cache: EncoderDecoderCache
    ) -> torch.Tensor:
        """Logits for ``tokens`` after what ``cache`` holds (both grow in place)."""
        out = self.model.model.decoder(
            input_ids=tokens, encoder_hidden_states=hidden, past_key_values=cache, use_cache=True
        )
        return self.model.proj_out(out.last_hidden_state)

    def _generate(
        self,
        hidden: torch.Tensor,
        prompts: list[list[int]],
        beam_size: int,
        max_length: int,
        temperature: float = 0.0,
        sampler: torch.Generator | None = None,
    ) -> list[Generated]:
        """Beam search, greedy (``beam_size`` 1), or sampling at ``temperature`` > 0
        (from ``sampler``)."""
        seeded = sampler or self.sampler()
        n = len(prompts)
        beams = max(1, beam_size)
        sot = self._special["sot"]
        eot = self._special["eot"]
        sot_index = prompts[0].index(sot)
        prompt = torch.tensor(prompts, device=self.device).repeat_interleave(beams, dim=0)
        memory = hidden.repeat_interleave(beams, dim=0)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        logits = self.decoder_step(prompt, memory, cache)
        no_speech = torch.softmax(logits[::beams, sot_index].float(), dim=-1)[
            :, self.no_speech
        ].tolist()
        logits = logits[:, -1].float()
        start = len(prompts[0]) - 1
        steps = min(max_length // 2, max_length - start)
        # Beam search keeps `beams` rows per window; the first step has one distinct beam.
        scores = torch.zeros((n, beams), device=self.device)
        scores[:, 1:] = -torch.inf
        # A prompt that ends with a timestamp starts there: the stamp opens the text.
        opened = prompts[0][-1] >= self._rules.begin
        sequences: list[list[int]] = [
            [prompts[i // beams][-1]] if opened else [] for i in range(n * beams)
        ]
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
        done = [False] * n
        for step in range(steps):
            logprobs = torch.log_softmax(
                self._rules.apply(logits, sequences, first=step == 0 and not opened), dim=-1
            )
            if beams == 1:
                if temperature > 0:
                    probs = torch.softmax(logprobs / temperature, dim=-1)
                    best = torch.multinomial(probs, 1, generator=seeded)[:, 0]
                else:
                    best = logprobs.argmax(dim=-1)
                picked = logprobs.gather(1, best[:, None])[:, 0]
                scores[:, 0] += torch.where(torch.tensor(done, device=self.device), 0.0, picked)
                chosen = best.tolist()
                for i, token in enumerate(chosen):
                    if done[i]:
                        continue
                    if token == eot:
                        done[i] = True
                        finished[i].append((0.0, sequences[i]))
                    else:
                        sequences[i] = [*sequences[i], token]
                if all(done):
                    break
                next_tokens = [eot if done[i] else t for i, t in enumerate(chosen)]
                rows = list(range(n))
            else:
                rows, next_tokens = self._beam_step(
                    logprobs, scores, sequences, finished, done, beams, eot
                )
                if all(done):
                    break
                # Only the text's keys and values follow the beams: a window's beams
                # all hear the same encoder states (rows stay within their window), so
                # the cross-attention cache needs no reordering (it was most of the
                # time of a beam step on a GPU: 1500 positions per row and layer).
                cache.self_attention_cache.reorder_cache(
                    torch.tensor(rows, device=self.device)  # type: ignore[arg-type]
                )
            tokens = torch.tensor(next_tokens, device=self.device)[:, None]
            logits = self.decoder_step(tokens, memory, cache)[:, -1].float()
        results = []
        for i in range(n):
            if beams == 1:
                best_tokens = sequences[i]
                total = float(scores[i, 0])
            else:
                pool = finished[i] or [
                    (float(scores[i, b]), sequences[i * beams + b]) for b in range(beams)
                ]
                total, best_tokens = max(pool, key=lambda c: c[0] / max(1, len(c[1])))
            results.append(
                Generated(
                    tokens=best_tokens,
                    avg_logprob=total / (len(best_tokens) + 1),
                    no_speech_prob=float(no_speech[i]),
                )
            )
        return results

    def _beam_step(
        self,
        logprobs: torch.Tensor,
        scores: torch.Tensor,
        sequences: list[list[int]],
        finished: list[list[tuple[float, list[int]]]],
        done: list[bool],
        beams: int,
        eot: int,
    ) -> tuple[list[int], list[int]]:
        """One beam-search step (openai-whisper's, patience 1); the rows and tokens to feed."""
        n = len(done)
        vocab = logprobs.shape[-1]
        total = scores[:, :, None] + logprobs.view(n, beams, vocab)
        top_scores, top_ids = total.view(n, -1).topk(2 * beams, dim=-1)
        top_scores_l, top_ids_l = top_scores.tolist(), top_ids.tolist()
        rows: list[int] = []
        tokens: list[int] = []
        new_sequences: list[list[int]] = []
        for i in range(n):
            kept: list[tuple[int, int, float]] = []
            if not done[i]:
                for score, flat in zip(top_scores_l[i], top_ids_l[i], strict=True):
                    beam, token = divmod(flat, vocab)
                    row = i * beams + beam
                    if token == eot:
                        if len(finished[i]) < beams:
                            finished[i].append((score, sequences[row]))
                    else:
                        kept.append((row, token, score))
                    if len(kept) == beams:
                        break
                if len(finished[i]) >= beams:
                    done[i] = True
            if done[i] or not kept:
                done[i] = True
                kept = [(i * beams + b, eot, -torch.inf) for b in range(beams)]
            # Fewer live candidates than beams: the last one stands in (its score repeats).
            kept += [kept[-1]] * (beams - len(kept))
            for b, (row, token, score) in enumerate(kept):
                rows.append(row)
                tokens.append(token)
                new_sequences.append([*sequences[row], token] if token != eot else sequences[row])
                scores[i, b] = score
        sequences[:] = new_sequences
        return rows, tokens

    # -- word alignment ------------------------------------------------------------

    @torch.inference_mode()
    def align(
        self,
        encoded: Any,
        indices: Sequence[int],
        start_sequence: list[int],
        text_tokens: Sequence[list[int]],
        num_frames: Sequence[int],
        spans: Sequence[tuple[float, float]] | None = None,
    ) -> list[Alignment]:
        """Cross-attention of the alignment heads over [start, notimestamps, text, end]."""
        eot = self._special["eot"]
        inputs = [
            [*start_sequence, self._special["no_timestamps"], *text, eot] for text in text_tokens
        ]
        width = max(len(seq) for seq in inputs)
        ids = torch.tensor([seq + [eot] * (width - len(seq)) for seq in inputs], device=self.device)
        memory = self._heard(encoded, list(indices), spans)
        layers = sorted({layer for layer, _ in self.alignment_heads})
        captured: dict[int, torch.Tensor] = {}
        decoder = self.model.model.decoder
        with self._align_lock:
            hooks = [
                decoder.layers[layer].encoder_attn_layer_norm.register_forward_hook(
                    lambda _m, _i, out, layer=layer: captured.__setitem__(layer, out)
                )
                for layer in layers
            ]
            try:
                out = decoder(input_ids=ids, encoder_hidden_states=memory, use_cache=False)
            finally:
                for hook in hooks:
                    hook.remove()
        logits = self.model.proj_out(out.last_hidden_state).float()
        probs = torch.softmax(logits[..., :eot], dim=-1)
        next_ids = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1).clamp(max=eot - 1)
        token_probs = probs.gather(-1, next_ids[..., None])[..., 0].cpu().numpy()
        projected = {
            layer: (
                decoder.layers[layer].encoder_attn.q_proj(captured[layer]).float(),
                decoder.layers[layer].encoder_attn.k_proj(memory).float(),
            )
            for layer in layers
        }
        heads = []
        for layer, head in self.alignment_heads:
            d = decoder.layers[layer].encoder_attn.head_dim
            q, k = (x[..., head * d : (head + 1) * d] for x in projected[layer])
            heads.append((q @ k.transpose(1, 2)) * d**-0.5)
        weights = torch.stack(heads, dim=1).cpu().numpy()
        offset = len(start_sequence)
        return [
            timing.alignment_from_attention(
                weights[b, :, : len(seq)],
                token_probs[b, offset : offset + len(text)].tolist(),
                frames,
                offset,
            )
            for b, (seq, text, frames) in enumerate(
                zip(inputs, text_tokens, num_frames, strict=True)
            )
        ]

    # -- language ----------------------------------------------------------------

    @torch.inference_mode()
    def detect_language(self, samples: np.ndarray) -> list[tuple[str, float]]:
        if not self.multilingual:
            return [("en", 1.0)]
        hidden = self.encode([samples]).hidden
        start = torch.tensor([[self._special["sot"]]], device=self.device)
        logits = self.model.proj_out(
            self.model.model.decoder(
                input_ids=start, encoder_hidden_states=hidden
            ).last_hidden_state
        )[0, -1].float()
        probs = torch.softmax(logits[self.lang_ids], dim=-1).tolist()
        ranked = sorted(zip(self.languages, probs, strict=True), key=lambda p: -p[1])
        return [(code, float(p)) for code, p in ranked]


class _TimestampRules:
    """Whisper's logit rules for decoding with timestamps, over a batch of rows."""

    def __init__(self, engine: TorchWhisper) -> None:
        special = engine._special
        self.eot = special["eot"]
        self.no_timestamps = special["no_timestamps"]
        self.begin = special["no_timestamps"] + 1
        self.vocab = engine.vocab_size
        self.device = engine.device
        base = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
        base[engine.suppress] = True
        base[self.no_timestamps] = True
        self.base = base
        first = base.clone()
        first[engine.suppress_begin] = True
        first[: self.begin] = True
        first[self.begin + MAX_INITIAL_TIMESTAMP_INDEX + 1 :] = True
        self.first = first

    def apply(
        self, logits: torch.Tensor, sequences: list[list[int]], *, first: bool
    ) -> torch.Tensor:
        if first:
            return logits.masked_fill(self.first, -torch.inf)
        begin = self.begin
        state = [
            (
                seq[-1] if seq else -1,
                seq[-2] if len(seq) > 1 else (seq[-1] if seq else -1),
                next((t for t in reversed(seq) if t >= begin), begin),
            )
            for seq in sequences
        ]
        last, penultimate, last_stamp = torch.tensor(state, device=self.device).unbind(dim=1)
        ids = torch.arange(self.vocab, device=self.device)[None, :]
        stamp = ids >= begin
        last_is_stamp = (last >= begin)[:, None]
        pair_done = last_is_stamp & (penultimate >= begin)[:, None]
        mask = (
            self.base[None, :]
            | (pair_done & stamp)
            | (last_is_stamp & ~pair_done & (ids < self.eot))
        )
        # Timestamps never go back.
        mask |= stamp & (ids < last_stamp[:, None])
        logits = logits.masked_fill(mask, -torch.inf)
        logprobs = torch.log_softmax(logits, dim=-1)
        stamps = torch.logsumexp(logprobs[:, begin:], dim=-1)
        text = logprobs[:, :begin].max(dim=-1).values
        force = ~pair_done[:, 0] & (stamps > text)
        return logits.masked_fill(force[:, None] & ~stamp, -torch.inf)


def _token_id(vocabulary: Any, token: str) -> int:
    found = vocabulary.token_to_id(token)
    if found is None:
        raise ValueError(f"{token} is not in this model's tokenizer.json")
    return int(found)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name in ("auto", "default"):
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def _generation_settings(folder: Path) -> dict[str, Any]:
    """Alignment heads, suppressed tokens and language ids, from our file or HF's."""
    ours = folder / "whisper_generation.json"
    if ours.is_file():
        return dict(json.loads(ours.read_text()))
    hf = json.loads((folder / "generation_config.json").read_text())
    return {
        "alignment_heads": hf.get("alignment_heads", []),
        "suppress_tokens": hf.get("suppress_tokens", []),
        "begin_suppress_tokens": hf.get("begin_suppress_tokens", []),
        "lang_ids": sorted(hf.get("lang_to_id", {}).values()),
    }


def _load_model(
    folder: Path, device: torch.device, dtype: torch.dtype
) -> WhisperForConditionalGeneration:
    if (folder / PACKED).is_file():
        config = WhisperConfig(**json.loads((folder / "config.json").read_text()))
        config._attn_implementation = "sdpa"
        with torch.device(device):
            model = WhisperForConditionalGeneration(config)
        state = {k: torch.from_numpy(a) for k, a in unpack_int8(folder).items()}
        model.load_state_dict(state, strict=False)
    else:
        model = WhisperForConditionalGeneration.from_pretrained(
            str(folder), dtype=torch.float32, attn_implementation="sdpa"
        )
    model.proj_out.weight = model.model.decoder.embed_tokens.weight
    return model.to(device=device, dtype=dtype).eval()  # type: ignore[call-arg]
