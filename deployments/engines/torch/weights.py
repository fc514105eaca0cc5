"""Whisper weights for the torch engine: CTranslate2's ``model.bin`` read into a
Hugging Face Whisper folder (converted once, into a checked cache), and a
compact int8 form (weights quantized per row, dequantized at load) small
enough to carry to a machine that has nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("ray.serve.whisper.engine")

_CT2_DTYPES: dict[int, Any] = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
}
CONVERTED_MARK = "converted-from.json"
"""Written last into a converted folder: the source's size and checksum of its head."""
PACKED = "whisper-int8.safetensors"


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 ``model.bin`` (format version 6), aliases resolved."""
    data = memoryview(path.read_bytes())
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return int(value)

    def string() -> str:
        nonlocal pos
        size = take("H")
        text = bytes(data[pos : pos + size - 1]).decode()
        pos += size
        return text

    version = take("I")
    if version < 5:
        raise ValueError(f"{path}: CTranslate2 binary version {version} is too old")
    string()  # spec name
    take("I")  # spec revision
    out: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype = take("B")
        size = take("I")
        if dtype not in _CT2_DTYPES:
            raise ValueError(f"{path}: variable {name} has a dtype this reader does not know")
        raw = np.frombuffer(data[pos : pos + size], dtype=_CT2_DTYPES[dtype])
        out[name] = raw.reshape(shape).copy()
        pos += size
    for _ in range(take("I")):
        alias, target = string(), string()
        out[alias] = out[target]
    return out


def _weight(v: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A float weight; int8 ones (quantized at conversion) come back scaled per row."""
    w = v[f"{name}/weight"]
    if w.dtype == np.int8:
        scale = v[f"{name}/weight_scale"].astype(np.float32)
        return w.astype(np.float32) / scale.reshape(-1, *([1] * (w.ndim - 1)))
    return w.astype(np.float32)


def _linear(v: dict[str, np.ndarray], src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    out[f"{dst}.weight"] = _weight(v, src)
    if f"{src}/bias" in v:
        out[f"{dst}.bias"] = v[f"{src}/bias"].astype(np.float32)


def _norm(v: dict[str, np.ndarray], src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    out[f"{dst}.weight"] = v[f"{src}/gamma"].astype(np.float32)
    out[f"{dst}.bias"] = v[f"{src}/beta"].astype(np.float32)


def _split(v: dict[str, np.ndarray], src: str, dsts: list[str], out: dict[str, np.ndarray]) -> None:
    """A fused projection (q|k|v or k|v) into separate ones; k has no bias in Whisper."""
    weights = np.split(_weight(v, src), len(dsts))
    biases = np.split(v[f"{src}/bias"].astype(np.float32), len(dsts))
    for dst, w, b in zip(dsts, weights, biases, strict=True):
        out[f"{dst}.weight"] = w
        if not dst.endswith("k_proj"):
            out[f"{dst}.bias"] = b


def ct2_to_hf(ct2_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """State dict, model config and generation config of a CTranslate2 Whisper folder."""
    v = read_ct2(ct2_dir / "model.bin")
    meta = json.loads((ct2_dir / "config.json").read_text())
    sd: dict[str, np.ndarray] = {}
    layers = {
        side: len({k.split("/")[1] for k in v if re.match(rf"{side}/layer_\d+/", k)})
        for side in ("encoder", "decoder")
    }
    for conv in ("conv1", "conv2"):
        sd[f"model.encoder.{conv}.weight"] = _weight(v, f"encoder/{conv}")
        sd[f"model.encoder.{conv}.bias"] = v[f"encoder/{conv}/bias"].astype(np.float32)
    for side in ("encoder", "decoder"):
        sd[f"model.{side}.embed_positions.weight"] = v[
            f"{side}/position_encodings/encodings"
        ].astype(np.float32)
        _norm(v, f"{side}/layer_norm", f"model.{side}.layer_norm", sd)
        for i in range(layers[side]):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            qkv = [f"{dst}.self_attn.{p}_proj" for p in "qkv"]
            _norm(v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", sd)
            _split(v, f"{src}/self_attention/linear_0", qkv, sd)
            _linear(v, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj", sd)
            _norm(v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm", sd)
            _linear(v, f"{src}/ffn/linear_0", f"{dst}.fc1", sd)
            _linear(v, f"{src}/ffn/linear_1", f"{dst}.fc2", sd)
            if side == "decoder":
                cross = f"{dst}.encoder_attn"
                _norm(v, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", sd)
                _linear(v, f"{src}/attention/linear_0", f"{cross}.q_proj", sd)
                _split(v, f"{src}/attention/linear_1", [f"{cross}.k_proj", f"{cross}.v_proj"], sd)
                _linear(v, f"{src}/attention/linear_2", f"{cross}.out_proj", sd)
    sd["model.decoder.embed_tokens.weight"] = _weight(v, "decoder/embeddings")
    vocab, d_model = sd["model.decoder.embed_tokens.weight"].shape
    heads = int(v["encoder/num_heads"])
    config = {
        "model_type": "whisper",
        "architectures": ["WhisperForConditionalGeneration"],
        "vocab_size": int(vocab),
        "num_mel_bins": int(sd["model.encoder.conv1.weight"].shape[1]),
        "d_model": int(d_model),
        "encoder_layers": layers["encoder"],
        "decoder_layers": layers["decoder"],
        "encoder_attention_heads": heads,
        "decoder_attention_heads": int(v["decoder/num_heads"]),
        "encoder_ffn_dim": int(sd["model.encoder.layers.0.fc1.weight"].shape[0]),
        "decoder_ffn_dim": int(sd["model.decoder.layers.0.fc1.weight"].shape[0]),
        "max_source_positions": int(sd["model.encoder.embed_positions.weight"].shape[0]),
        "max_target_positions": int(sd["model.decoder.embed_positions.weight"].shape[0]),
        "tie_word_embeddings": True,
        "decoder_start_token_id": 50258,
        "eos_token_id": 50257,
        "pad_token_id": 50257,
        "bos_token_id": 50257,
    }
    generation = {
        "alignment_heads": meta.get("alignment_heads", []),
        "suppress_tokens": meta.get("suppress_ids", []),
        "begin_suppress_tokens": meta.get("suppress_ids_begin", []),
        "lang_ids": meta.get("lang_ids", []),
    }
    return sd, config, generation


def _fingerprint(path: Path) -> dict[str, Any]:
    """Size and a checksum of the first 16 MB: enough to see another file."""
    with path.open("rb") as f:
        head = hashlib.sha256(f.read(16 << 20)).hexdigest()
    return {"source": str(path), "size": path.stat().st_size, "sha256_16mb": head}


def converted(ct2_dir: Path, cache_dir: Path) -> Path:
    """A Hugging Face Whisper folder for a CTranslate2 one, converted once into ``cache_dir``.

    The folder counts as done only when its mark (written last) matches the
    source's size and checksum; otherwise it is converted again.
    """
    from safetensors.numpy import save_file

    source = ct2_dir / "model.bin"
    mark = _fingerprint(source)
    target = cache_dir / "torch" / hashlib.sha1(str(ct2_dir.resolve()).encode()).hexdigest()[:16]
    done = target / CONVERTED_MARK
    if done.is_file() and json.loads(done.read_text()) == mark:
        return target
    sd, config, generation = ct2_to_hf(ct2_dir)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # Tied embeddings: the output projection is the token embedding, stored once.
    save_file({k: np.ascontiguousarray(a) for k, a in sd.items()}, partial / "model.safetensors")
    (partial / "config.json").write_text(json.dumps(config, indent=1))
    (partial / "whisper_generation.json").write_text(json.dumps(generation))
    shutil.copyfile(ct2_dir / "tokenizer.json", partial / "tokenizer.json")
    (partial / CONVERTED_MARK).write_text(json.dumps(mark))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    logger.info("converted the CTranslate2 weights in %s for the torch engine", ct2_dir)
    return target


def pack_int8(folder: Path, out: Path) -> Path:
    """Write ``folder``'s weights as int8 rows with a float16 scale each (matrices) or float16.

    tiny.en goes from 75 MB (float16) to about 40 MB. What is lost is the
    rounding of each weight to 1/127 of its row's largest: the same
    quantization CTranslate2 applies with ``compute_type=int8``.
    """
    from safetensors.numpy import load_file, save_file

    sd = load_file(str(folder / "model.safetensors"))
    packed: dict[str, np.ndarray] = {}
    for name, w in sd.items():
        if w.ndim == 2 and w.shape[0] * w.shape[1] >= 1 << 16 and "embed_positions" not in name:
            scale = np.abs(w).max(axis=1, keepdims=True).astype(np.float32) / 127.0
            scale[scale == 0] = 1.0
            packed[f"{name}.int8"] = np.round(w / scale).astype(np.int8)
            packed[f"{name}.scale"] = scale.astype(np.float16)
        else:
            packed[name] = w.astype(np.float16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(packed, str(out / PACKED))
    for extra in ("config.json", "whisper_generation.json", "tokenizer.json"):
        shutil.copyfile(folder / extra, out / extra)
    return out


def unpack_int8(folder: Path) -> dict[str, np.ndarray]:
    """The float32 state dict of a folder written by ``pack_int8``."""
    from safetensors.numpy import load_file

    packed = load_file(str(folder / PACKED))
    sd: dict[str, np.ndarray] = {}
    for name, a in packed.items():
        if name.endswith(".int8"):
            base = name.removesuffix(".int8")
            sd[base] = a.astype(np.float32) * packed[f"{base}.scale"].astype(np.float32)
        elif not name.endswith(".scale"):
            sd[name] = a.astype(np.float32)
    return sd
