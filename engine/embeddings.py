"""Embedding helpers: float32 bytes for storage, cosine, and a bounded thread-safe LRU.

Embeddings are stored (in Redis, keyed by CLIP model id) as raw little-endian
float32, the same on every machine, so a stored image embedding is read back
bit for bit.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, Optional, TypeVar

import numpy as np

V = TypeVar("V")


def embedding_to_bytes(vec) -> bytes:
    """A 1-D embedding as little-endian float32 bytes."""
    arr = np.asarray(vec, dtype=np.float32)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"an embedding is a non-empty 1-D vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("embedding contains NaN or infinity")
    return arr.astype("<f4", copy=False).tobytes()


def embedding_from_bytes(data: bytes) -> np.ndarray:
    """Inverse of `embedding_to_bytes`: a writable float32 (D,) array."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    if len(data) == 0 or len(data) % 4:
        raise ValueError(f"embedding bytes must be a non-empty multiple of 4 long, got {len(data)}")
    return np.frombuffer(bytes(data), dtype="<f4").astype(np.float32)


def as_unit_vector(vec, dim: int) -> np.ndarray:
    """A float32 (dim,) copy of `vec`, L2-normalised; ValueError for the wrong shape, zero or non-finite."""
    arr = np.asarray(vec, dtype=np.float32).reshape(-1)
    if arr.shape != (dim,):
        raise ValueError(f"expected an embedding of {dim} values, got {arr.size}")
    norm = float(np.linalg.norm(arr.astype(np.float64)))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("embedding is zero or not finite")
    return (arr / norm).astype(np.float32)


class LRUCache(Generic[V]):
    """A thread-safe LRU bounded by entry count and, optionally, total bytes."""

    def __init__(self, max_entries: int, max_bytes: Optional[int] = None,
                 size_of: Callable[[V], int] = lambda v: 0):
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._data: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Hashable) -> Optional[V]:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: V) -> None:
        if self.max_entries == 0:
            return
        size = self._size_of(value)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if self.max_bytes is not None and size > self.max_bytes:
                return  # larger than the whole budget: do not keep it
            self._data[key] = (value, size)
            self._bytes += size
            while len(self._data) > self.max_entries or (
                    self.max_bytes is not None and self._bytes > self.max_bytes):
                _, (_, evicted) = self._data.popitem(last=False)
                self._bytes -= evicted
                self.evictions += 1

    def pop(self, key: Hashable) -> Optional[V]:
        with self._lock:
            item = self._data.pop(key, None)
            if item is None:
                return None
            self._bytes -= item[1]
            return item[0]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes
