"""Sentence embeddings for knowledge retrieval (pure numpy): all-MiniLM-L6-v2.

A caller asks "what kinds of plans do you sell?" and the knowledge base says
"What tariffs do you offer?": no shared word, so BM25 cannot see it; a sentence embedding
can. :class:`SentenceEmbedder` runs the packaged ``all-MiniLM-L6-v2`` (a 6-layer, 384-wide
BERT, mean-pooled, L2-normalised; Apache-2.0) in plain numpy, one question at a time
(~20 tokens: a few milliseconds on one core), read straight from the package's zip (the
safetensors weights and the WordPiece ``tokenizer.json``), nothing extracted or downloaded.

Only the tensors a BERT encoder needs are read; the file layout is checked (names, shapes)
and any mismatch raises :class:`EmbedderModelError` naming the file.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from voicebot_pbx.config import KnowledgeConfig

Vector = npt.NDArray[np.float32]

WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
CONFIG_NAME = "config.json"
_MAX_TOKENS = 128  # a caller's question is ~20 tokens; passages are cut here
_DTYPES = {"F32": np.float32, "I64": np.int64}


class EmbedderModelError(RuntimeError):
    """The embedding model is missing, unreadable or not a BERT encoder."""


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_w: Vector  # [hidden, 3 * hidden]
    qkv_b: Vector
    out_w: Vector
    out_b: Vector
    ln1_w: Vector
    ln1_b: Vector
    up_w: Vector
    up_b: Vector
    down_w: Vector
    down_b: Vector
    ln2_w: Vector
    ln2_b: Vector


class SentenceEmbedder:
    """all-MiniLM-L6-v2 from a zip (or folder) holding ``model.safetensors``,
    ``tokenizer.json`` and ``config.json``. :meth:`embed` is thread-safe (no state)."""

    def __init__(self, source: Path) -> None:
        self.source = Path(source)
        files = _read_files(self.source, (WEIGHTS_NAME, TOKENIZER_NAME, CONFIG_NAME))
        try:
            config = json.loads(files[CONFIG_NAME])
            self._heads = int(config["num_attention_heads"])
            self._eps = float(config.get("layer_norm_eps", 1e-12))
            n_layers = int(config["num_hidden_layers"])
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbedderModelError(f"{self.source}: bad {CONFIG_NAME} ({exc})") from None
        tensors = _safetensors(files[WEIGHTS_NAME], self.source)
        self._tokenizer = _tokenizer(files[TOKENIZER_NAME], self.source)

        def get(name: str) -> Vector:
            try:
                return tensors[name]
            except KeyError:
                raise EmbedderModelError(f"{self.source}: no tensor {name}") from None

        self._word = get("embeddings.word_embeddings.weight")
        self._position = get("embeddings.position_embeddings.weight")
        self._token_type = get("embeddings.token_type_embeddings.weight")[0]
        self._emb_ln = (get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"))
        hidden = self._word.shape[1]
        if hidden % self._heads:
            raise EmbedderModelError(f"{self.source}: {hidden} wide, {self._heads} heads")
        self.dimension = int(hidden)
        self._layers: list[_Layer] = []
        for i in range(n_layers):
            p = f"encoder.layer.{i}."
            attn = p + "attention.self."
            # torch Linear weights are [out, in]: transposed once here for x @ w.
            self._layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(
                        np.concatenate(
                            [get(attn + n + ".weight") for n in ("query", "key", "value")]
                        ).T
                    ),
                    qkv_b=np.concatenate(
                        [get(attn + n + ".bias") for n in ("query", "key", "value")]
                    ),
                    out_w=np.ascontiguousarray(get(p + "attention.output.dense.weight").T),
                    out_b=get(p + "attention.output.dense.bias"),
                    ln1_w=get(p + "attention.output.LayerNorm.weight"),
                    ln1_b=get(p + "attention.output.LayerNorm.bias"),
                    up_w=np.ascontiguousarray(get(p + "intermediate.dense.weight").T),
                    up_b=get(p + "intermediate.dense.bias"),
                    down_w=np.ascontiguousarray(get(p + "output.dense.weight").T),
                    down_b=get(p + "output.dense.bias"),
                    ln2_w=get(p + "output.LayerNorm.weight"),
                    ln2_b=get(p + "output.LayerNorm.bias"),
                )
            )
            if self._layers[-1].qkv_w.shape != (hidden, 3 * hidden):
                raise EmbedderModelError(f"{self.source}: layer {i} is not {hidden} wide")

    def embed(self, text: str) -> Vector:
        """The L2-normalised mean-pooled embedding of ``text`` ([dimension] float32)."""
        ids = self._tokenizer.encode(text).ids  # [CLS] ... [SEP], truncated to _MAX_TOKENS
        x = self._word[ids] + self._position[: len(ids)] + self._token_type
        x = _layer_norm(x, *self._emb_ln, self._eps)
        n, hidden = x.shape
        head_dim = hidden // self._heads
        scale = np.float32(1.0 / np.sqrt(head_dim))
        for layer in self._layers:
            qkv = x @ layer.qkv_w + layer.qkv_b
            q, k, v = (
                qkv[:, i * hidden : (i + 1) * hidden].reshape(n, self._heads, head_dim)
                for i in range(3)
            )
            scores = np.einsum("qhd,khd->hqk", q, k) * scale
            scores -= scores.max(axis=-1, keepdims=True)
            weights = np.exp(scores)
            weights /= weights.sum(axis=-1, keepdims=True)
            context = np.einsum("hqk,khd->qhd", weights, v).reshape(n, hidden)
            x = _layer_norm(
                x + context @ layer.out_w + layer.out_b, layer.ln1_w, layer.ln1_b, self._eps
            )
            up = _gelu(x @ layer.up_w + layer.up_b)
            x = _layer_norm(
                x + up @ layer.down_w + layer.down_b, layer.ln2_w, layer.ln2_b, self._eps
            )
        pooled = x.mean(axis=0)
        norm = float(np.linalg.norm(pooled))
        return np.asarray(pooled / norm if norm > 0 else pooled, dtype=np.float32)


def _layer_norm(x: Vector, weight: Vector, bias: Vector, eps: float) -> Vector:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return np.asarray(((x - mean) / np.sqrt(var + eps)) * weight + bias, dtype=np.float32)


def _gelu(x: Vector) -> Vector:
    # BERT's exact gelu: x * Phi(x), Phi from erf (numpy has no erf: Abramowitz-Stegun 7.1.26
    # is 1.5e-7 accurate, far below the float32 noise of the matmuls around it).
    z = x / np.float32(np.sqrt(2.0))
    sign = np.sign(z)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erf = sign * (1.0 - poly * np.exp(-a * a))
    return np.asarray(0.5 * x * (1.0 + erf), dtype=np.float32)


def _read_files(source: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The named files from a zip (anywhere inside it) or a folder."""
    out: dict[str, bytes] = {}
    if source.is_dir():
        for name in names:
            path = source / name
            if not path.is_file():
                raise EmbedderModelError(f"{source}: no {name} (missing file)")
            out[name] = path.read_bytes()
        return out
    if not source.is_file():
        raise EmbedderModelError(f"embedding model {source} does not exist")
    try:
        with zipfile.ZipFile(source) as zf:
            members = {Path(info.filename).name: info.filename for info in zf.infolist()}
            for name in names:
                if name not in members:
                    raise EmbedderModelError(f"{source}: no {name} inside (missing file)")
                out[name] = zf.read(members[name])
    except (zipfile.BadZipFile, OSError) as exc:
        raise EmbedderModelError(f"{source}: not a readable zip ({exc})") from None
    return out


def _safetensors(data: bytes, source: Path) -> dict[str, Vector]:
    """The float32 tensors of a safetensors file (8-byte header length, JSON, raw data)."""
    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        header: dict[str, Any] = json.loads(data[8 : 8 + header_len])
    except (struct.error, ValueError) as exc:
        raise EmbedderModelError(f"{source}: {WEIGHTS_NAME} has no valid header ({exc})") from None
    base = 8 + header_len
    tensors: dict[str, Vector] = {}
    for name, spec in header.items():
        if name == "__metadata__" or spec.get("dtype") not in _DTYPES:
            continue
        start, end = spec["data_offsets"]
        dtype = _DTYPES[spec["dtype"]]
        if base + end > len(data):
            raise EmbedderModelError(f"{source}: {WEIGHTS_NAME} is cut short at {name}")
        array = np.frombuffer(
            data, dtype=dtype, count=(end - start) // np.dtype(dtype).itemsize, offset=base + start
        )
        tensors[name] = array.reshape(spec["shape"]).astype(np.float32, copy=dtype != np.float32)
    return tensors


def _tokenizer(data: bytes, source: Path) -> Any:
    from tokenizers import Tokenizer  # lazy: only the embedder needs it here

    try:
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception on a bad file
        raise EmbedderModelError(f"{source}: {TOKENIZER_NAME} unreadable ({exc})") from None
    # The shipped file pads every input to 128 tokens (a batch setting): one text at a time
    # needs no padding, and padding would enter the mean pooling.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=_MAX_TOKENS)
    return tokenizer


def load_embedder(config: KnowledgeConfig) -> SentenceEmbedder | None:
    """The embedder ``[knowledge]`` asks for (None: ``retrieval = "bm25"``): the configured
    ``embedding_model`` zip or folder, else the packaged ``minilm-l6-v2``. Raises
    :class:`EmbedderModelError` (or ``ModelNotInstalledError``) naming what is missing."""
    if config.retrieval != "hybrid":
        return None
    from voicebot_pbx.models import MINILM_L6_V2, resolve_model_path

    return SentenceEmbedder(resolve_model_path(config.embedding_model or None, MINILM_L6_V2))
