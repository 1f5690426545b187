"""Hints: the word from a shipped vocabulary that CLIP associates most with a target image.

`compute_hint(image_embedding, vocab_embeddings, words)` is the pure part: the
vocabulary entry with the highest cosine to the image. The vocabulary
(assets/hint_vocab.txt) is embedded once per CLIP model and cached in Redis
under that model id (`cap:m:{mid}:vocab`, checked against a hash of the word
list), so every process reuses it; each target's hint is computed once, when
the target is added, and stored with its embedding.

`as_embedder` adapts either an `engine.scorer.Scorer` or a bare
`engine.clip_model.LoadedClip` to the two calls this package needs.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

VOCAB_NAME = "hint_vocab.txt"
VOCAB_PATH = Path(__file__).resolve().parents[1] / "assets" / VOCAB_NAME
TEXT_BATCH = 256
_memo: dict[tuple[str, str], np.ndarray] = {}  # (model id, words sha) -> matrix; a cache of Redis data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Embedder:
    """Image and text embeddings (float32, L2-normalised rows) from a Scorer or a LoadedClip."""

    def __init__(self, source):
        self.source = source
        self.model_id = getattr(source, "model_id", None)
        if not (hasattr(source, "embed_image") or hasattr(source, "encode_images")):
            raise TypeError(f"need an engine.scorer.Scorer or a LoadedClip, got {type(source).__name__}")

    def embed_images(self, images: Sequence) -> np.ndarray:
        if hasattr(self.source, "embed_image"):
            return np.stack([np.asarray(self.source.embed_image(img), dtype=np.float32) for img in images])
        return self.source.encode_images(list(images)).cpu().numpy().astype(np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if hasattr(self.source, "embed_texts"):
            rows = [np.asarray(self.source.embed_texts(list(texts[i:i + TEXT_BATCH])), dtype=np.float32)
                    for i in range(0, len(texts), TEXT_BATCH)]
            return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
        return _clip_texts(self.source, texts)


def _clip_texts(clip, texts: Sequence[str]) -> np.ndarray:
    """Batched text embeddings straight from a LoadedClip (its reference path is one caption at a time)."""
    import torch
    import torch.nn.functional as F
    rows = []
    with torch.inference_mode():
        for i in range(0, len(texts), TEXT_BATCH):
            tokens = clip.tokenizer(list(texts[i:i + TEXT_BATCH])).to(clip.device)
            rows.append(F.normalize(clip.model.encode_text(tokens).float(), dim=-1).cpu().numpy())
    return np.concatenate(rows).astype(np.float32)


def as_embedder(source) -> Embedder:
    return source if isinstance(source, Embedder) else Embedder(source)


def load_vocab(path: Optional[str | os.PathLike] = None) -> list[str]:
    """The hint words: one per line, `#` comments and blank lines skipped, duplicates dropped."""
    words, seen = [], set()
    for line in Path(path or VOCAB_PATH).read_text(encoding="utf-8").splitlines():
        word = line.split("#", 1)[0].strip()
        if word and word.lower() not in seen:
            seen.add(word.lower())
            words.append(word)
    if not words:
        raise ValueError(f"the hint vocabulary {path or VOCAB_PATH} has no words")
    return words


_default_vocab: list[str] = []


def default_vocab() -> list[str]:
    """The shipped vocabulary, read once per process."""
    if not _default_vocab:
        _default_vocab.extend(load_vocab())
    return list(_default_vocab)


def cached_hint(store, image_embedding) -> Optional[tuple[str, float]]:
    """The hint from the shipped vocabulary if its embeddings for the store's model are already
    cached (no CLIP needed); None otherwise. Lets any process that adds a target (the worker,
    the CLI) give it a hint once the vocabulary has been embedded for that model."""
    words = default_vocab()
    key = (store.model_id, words_sha(words))
    matrix = _memo.get(key)
    if matrix is None:
        matrix = store.vocab_embeddings(key[1])
        if matrix is None:
            return None
        _memo[key] = matrix
    return compute_hint(image_embedding, matrix, words)


def words_sha(words: Sequence[str]) -> str:
    return sha256("\n".join(words).encode("utf-8"))


def compute_hint(image_embedding, vocab_embeddings, words: Sequence[str]) -> tuple[str, float]:
    """The word whose embedding has the highest cosine with the image, and that cosine."""
    image = np.asarray(image_embedding, dtype=np.float32).reshape(-1)
    matrix = np.asarray(vocab_embeddings, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(words) or len(words) == 0:
        raise ValueError(f"need one embedding row per word: {matrix.shape} for {len(words)} words")
    if matrix.shape[1] != image.shape[0]:
        raise ValueError(f"image embedding has {image.shape[0]} dimensions, the vocabulary {matrix.shape[1]}")
    image = image / max(float(np.linalg.norm(image)), 1e-12)
    norms = np.maximum(np.linalg.norm(matrix, axis=1), 1e-12)
    scores = (matrix @ image) / norms
    best = int(np.argmax(scores))
    return words[best], float(scores[best])


def vocab_matrix(store, embedder, words: Optional[Sequence[str]] = None) -> tuple[list[str], np.ndarray]:
    """The vocabulary's embeddings for the store's model: from this process, else Redis, else computed
    once (under a Redis lock, so several processes starting together embed it once)."""
    words = list(words) if words is not None else default_vocab()
    sha = words_sha(words)
    key = (store.model_id, sha)
    if key in _memo:
        return words, _memo[key]
    matrix = store.vocab_embeddings(sha)
    if matrix is None:
        with store.r.lock(f"cap:lock:vocab:{store.model_id}", timeout=1800, blocking_timeout=1800):
            matrix = store.vocab_embeddings(sha)
            if matrix is None:
                log.info("embedding %d hint words for %s (once per model)", len(words), store.model_id)
                matrix = as_embedder(embedder).embed_texts(words)
                store.save_vocab_embeddings(sha, matrix)
    _memo[key] = matrix
    return words, matrix


def hint_for(store, embedder, image_embedding, words: Optional[Sequence[str]] = None) -> tuple[str, float]:
    """The hint for one image embedding, with the store model's cached vocabulary."""
    words, matrix = vocab_matrix(store, embedder, words)
    return compute_hint(image_embedding, matrix, words)


def backfill_hints(store, embedder, words: Optional[Sequence[str]] = None) -> int:
    """Give every ready target of the store's model that lacks a hint one; returns how many."""
    count = 0
    for target in store.list_targets(status="ready"):
        if target.hint_word:
            continue
        word, score = hint_for(store, embedder, store.target_embedding(target.id), words)
        store.set_hint(target.id, word, score)
        count += 1
    return count
