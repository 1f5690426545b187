"""The judge: normalised CLIP embeddings and cosine scores, exact and fast on CPU.

Every text embedding equals open_clip's own `model.encode_text(tokenizer([c]))`
(normalised) within float rounding (tests hold it to 1e-5), whatever path
produced it. The speed comes from `engine.text_encoder` (context cut at the
end token, length-grouped batches, cached prefix keys/values per typing
stream) and from here:

* one batching thread encodes everything queued while it was busy as one
  batch (one packed forward); from idle it first collects the requests that
  arrive within `batch_window_ms` of each other (at most 5 windows in all); the queue is bounded and a full queue raises `ScorerBusyError` at
  once instead of growing latency;
* an LRU of token ids -> normalised embedding (captions that tokenise alike,
  e.g. differing only in spacing or case, share an entry);
* per stream key (a player's live-typing stream), the keys/values of the last
  draft's tokens, LRU-evicted by count and by memory;
* all model compute runs under one lock, one computation at a time, with
  torch's intra-op threads set by `configure_torch_threads` (default: cores
  minus one, so 1 on a 2-core machine; see there why) and then, unless a
  count was configured, chosen by measurement as the box's load changes
  (`ThreadTuner`): request threads only
  validate, tokenise and wait, and bulk work (`embed_texts`) runs in chunks
  that let waiting live drafts go first.

Bad captions raise `CaptionError` (a ValueError whose message a player can
read) in the caller's thread before anything is queued, so a bad request never
reaches, stalls or kills a batch.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import unicodedata
from concurrent.futures import Future
from typing import Any, Optional, Sequence

import numpy as np
import torch

from engine.embeddings import LRUCache, as_unit_vector, embedding_from_bytes, embedding_to_bytes
from engine.text_encoder import Job, Prefix, Result, TextEncoder, common_prefix_len
from engine.thread_clock import STATES as THREAD_STATES, split_wall_time, thread_times

__all__ = ["CaptionError", "ScorerBusyError", "ScorerClosedError", "Scorer", "validate_caption",
           "configure_torch_threads", "embedding_to_bytes", "embedding_from_bytes"]

log = logging.getLogger(__name__)

_ALLOWED_CONTROLS = frozenset("\t\n\r")  # whitespace the tokenizer folds into a space
BULK_CHUNK = 64  # embed_texts encodes at most this many captions per compute-lock hold
BULK_YIELD_S = 1.0  # between chunks, bulk work lets waiting live batches go first, for at most this long
BATCH_WINDOW_CAP = 5  # a batch waits at most this many windows after its first request
KEY_CACHE_ENTRIES = 1024  # recent captions' token keys: a draft is tokenized once, not at its check and again at scoring


class CaptionError(ValueError):
    """A caption the game cannot score; the message is meant for the player."""


class ScorerBusyError(RuntimeError):
    """Back-pressure: the scoring queue is full. Retry shortly."""


class ScorerClosedError(RuntimeError):
    """The scorer was closed."""


def validate_caption(caption: Any, max_chars: int = 200) -> str:
    """The caption without surrounding whitespace, or CaptionError saying what is wrong.

    Surrounding whitespace never changes the embedding (the tokenizer strips it).
    """
    if not isinstance(caption, str):
        raise CaptionError("A caption must be text.")
    text = caption.strip()
    if not text:
        raise CaptionError("Please write a caption: it is empty.")
    if len(text) > max_chars:
        raise CaptionError(f"That caption is too long: {len(text)} characters, the limit is {max_chars}.")
    # The whole caption, not just `text`: str.strip() also removes some control characters
    # (U+001C-U+001F, U+0085) that the tokenizer would not treat as whitespace.
    for ch in caption:
        if "\ud800" <= ch <= "\udfff":
            raise CaptionError("The caption contains a broken character (an unpaired surrogate); "
                               "please retype it.")
        if ch not in _ALLOWED_CONTROLS and unicodedata.category(ch) == "Cc":
            raise CaptionError(f"The caption contains an invisible control character "
                               f"(U+{ord(ch):04X}); please remove it.")
    return text


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_torch_threads(num_threads: Optional[int] = None) -> int:
    """Set torch's intra-op thread count for scoring and return it.

    Default: one fewer than the cores this process may use (at least 1), so on
    a 2-core machine the model computes on one core and the other is left to
    request threads, Redis and any generator worker. Why not all cores: torch's
    OpenMP ops end in a barrier, and when another busy process takes one of the
    two cores every op waits for the preempted thread. Measured on this 2-core
    machine under load from other processes: ViT-B-32 text encoding ran 4-20x
    slower with 2 threads than with 1 (open_clip's own path as much as ours);
    on an idle machine 2 threads are about 1.8x faster. `num_threads` overrides
    (use 2 on a dedicated 2-core box). torch.set_num_threads is process-wide;
    all scorer compute runs one computation at a time under one lock, so these
    threads are never oversubscribed by the scorer itself.
    """
    cores = _cores()
    want = max(1, int(num_threads) if num_threads else cores - 1)
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)
    return want


def exact_cuda_matmuls() -> None:
    """Make CUDA fp32 matmuls full fp32 (no TF32), as the exact path promises.

    TF32 keeps 10 mantissa bits: errors near 1e-3, far beyond the 1e-5 the
    scores are held to. The setting is process-wide; a process that serves
    scores wants it anyway.
    """
    if torch.get_float32_matmul_precision() != "highest" or torch.backends.cuda.matmul.allow_tf32:
        log.warning("scorer on CUDA: turning TF32 matmuls off (exact fp32 scores)")
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False


class ThreadTuner:
    """Chooses the scorer's intra-op thread count by measurement, again and again.

    Why: on a 2-core box, 2 threads encode ~1.8x faster when the web process
    has the machine to itself, and 4-20x slower when another busy process takes
    a core (every OpenMP op ends in a barrier that waits for the preempted
    thread). Which case holds changes with the box's load, so the batching
    thread keeps a cost per batch for each choice (seconds per new token row,
    counting a call's fixed cost as OVERHEAD_ROWS rows: the pass over the
    weights), stays on the cheaper one, and every `explore_every` batches tries
    another for up to TRIAL batches (the first of a trial, which pays for waking
    the thread pool, is not counted unless it costs over WARM_UP_LIMIT times the
    current choice: a collapse, not a wake-up). A trial batch costing more than
    twice the current choice ends the trial at once, and each lost trial doubles the gap
    to the next (up to MAX_EXPLORE_EVERY), so a collapse costs a batch or two
    now and then, not a run of slow batches; and when the current choice's cost
    grows past 1.5x another's last measure, that one is tried at once. Used
    only when no thread count is configured.
    """

    OVERHEAD_ROWS = 16.0
    EXPLORE_EVERY = 50
    MAX_EXPLORE_EVERY = 1600
    TRIAL = 8
    # Waking the pool costs a few ms; a collapse (a core taken by another process) costs 4-20x
    # a batch: on a busy box an unguarded warm-up batch was each trial's p99 outlier (~1 s).
    WARM_UP_LIMIT = 4.0

    def __init__(self, choices: Sequence[int]):
        self.choices = tuple(dict.fromkeys(int(c) for c in choices))
        self.home = self.current = self.choices[0]
        self.cost: dict[int, Optional[float]] = {c: None for c in self.choices}
        self.explore_every = self.EXPLORE_EVERY
        self._trial: list[float] = []
        self._trial_left = 0
        self._until_trial = self.EXPLORE_EVERY
        self._trials = 0
        self.switches = 0

    def observe(self, rows: int, seconds: float) -> int:
        """Record one batch computed with `current` threads; the thread count for the next."""
        unit = seconds / (rows + self.OVERHEAD_ROWS)
        if self._trial_left:
            self._trial_left -= 1
            warm_up = self._trial_left == self.TRIAL - 1
            home_cost = self.cost[self.home]
            if not warm_up or (home_cost is not None and unit > self.WARM_UP_LIMIT * home_cost):
                self._trial.append(unit)
                warm_up = False
            if self._trial_left and (warm_up or home_cost is None or unit <= 2 * home_cost):
                return self.current
            self._end_trial()
            return self.current
        old = self.cost[self.home]
        self.cost[self.home] = unit if old is None else 0.8 * old + 0.2 * unit
        self._until_trial -= 1
        if any(self.cost[c] is not None and self.cost[self.home] > 1.5 * self.cost[c]
               for c in self.choices if c != self.home):
            self._until_trial = 0  # the current choice got much worse than another's last measure: retry now
        if self._until_trial <= 0 and len(self.choices) > 1:
            others = [c for c in self.choices if c != self.home]
            self.current = others[self._trials % len(others)]
            self._trials += 1
            self._trial, self._trial_left = [], self.TRIAL
        return self.current

    def _end_trial(self) -> None:
        tried = self.current
        self._trial_left = 0
        if self._trial:
            self.cost[tried] = sorted(self._trial)[len(self._trial) // 2]
        home_cost = self.cost[self.home]
        won = bool(self._trial) and home_cost is not None and self.cost[tried] < home_cost
        if won:
            self.home = tried
            self.switches += 1
            self.explore_every = self.EXPLORE_EVERY
        else:
            self.explore_every = min(self.MAX_EXPLORE_EVERY, self.explore_every * 2)
        self.current = self.home
        self._until_trial = self.explore_every


class _Request:
    __slots__ = ("key", "stream", "future")

    def __init__(self, key: tuple[int, ...], stream: Optional[str]):
        self.key = key
        self.stream = stream
        self.future: Future = Future()


_STOP = object()


class Scorer:
    """Normalised CLIP embeddings and cosine scores for one loaded model (thread-safe)."""

    def __init__(self, clip, *, max_caption_chars: int = 200, batch_window_ms: float = 2.0,
                 max_queue: int = 1024, cache_size: int = 10_000, stream_cache_size: int = 4096,
                 stream_cache_mb: float = 256.0, max_batch: int = 256, num_threads: Optional[int] = None,
                 precision: str = "fp32"):
        if max_caption_chars < 1 or max_queue < 1 or max_batch < 1 or batch_window_ms < 0:
            raise ValueError("max_caption_chars, max_queue and max_batch must be >= 1; batch_window_ms >= 0")
        self.clip = clip
        self.model_id: str = clip.model_id
        self.is_pretrained: bool = clip.is_pretrained
        self.max_caption_chars = int(max_caption_chars)
        self.batch_window_s = batch_window_ms / 1000.0
        self.max_batch = int(max_batch)
        self.num_threads = configure_torch_threads(num_threads)
        cores = _cores()
        # No configured count on a multi-core CPU: measure which count is faster, and keep measuring.
        self._tuner = (ThreadTuner((self.num_threads, cores))
                       if num_threads is None and cores > 1 and clip.device.type == "cpu" else None)
        if clip.device.type == "cuda" and precision == "fp32":
            exact_cuda_matmuls()
        self.encoder = TextEncoder(clip, precision=precision)
        self.precision = precision
        self.embed_dim = int(clip.embed_dim)
        self._captions: LRUCache[np.ndarray] = LRUCache(cache_size)
        # Caption text -> token key. A live draft is checked (validate_caption, before it may queue) and
        # then scored (embed_text): without this both tokenize the same text, and the tokenizer's
        # regex and BPE were a fifth of a web worker's busy time under bench/rooms_load.py.
        self._token_keys: LRUCache[tuple[int, ...]] = LRUCache(KEY_CACHE_ENTRIES)
        self._streams: LRUCache[Prefix] = LRUCache(stream_cache_size, int(stream_cache_mb * 2 ** 20),
                                                   size_of=lambda p: p.nbytes)
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._compute = threading.Lock()  # one model computation at a time
        self._background = None  # paused while live batches compute (pause_while_live)
        self._live_waiting = threading.Event()  # the batching thread wants the model (bulk work yields)
        self._submit_lock = threading.Lock()  # orders submissions against close()
        self._stats_lock = threading.Lock()
        self._closed = False
        self._stats = dict(requests=0, cache_hits=0, busy=0, batches=0, encoded=0,
                           tokens_computed=0, tokens_reused=0, errors=0, compute_s=0.0,
                           # compute_s split by what the computing thread did (engine/thread_clock.py)
                           **{f"compute_{state}_s": 0.0 for state in THREAD_STATES})
        self._thread_times = thread_times() is not None  # Linux: the split above is measured
        self._thread = threading.Thread(target=self._run, name=f"scorer[{self.model_id}]", daemon=True)
        self._thread.start()
        log.info("scorer ready: %s, %d torch threads, fast path %s, %s matmuls", clip.describe(),
                 self.num_threads, "on" if self.encoder.fast else f"off ({self.encoder.problem})",
                 self.encoder.linear_backend if self.encoder.fast else "open_clip")
        if precision != "fp32":
            log.warning("scorer precision %s: scores are close to, not exactly, open_clip's "
                        "(bench/scoring.py --precision %s prints the error)", precision, precision)

    # ---- public API ---------------------------------------------------------
    def validate_caption(self, caption: Any) -> str:
        """The caption stripped of surrounding whitespace; CaptionError if it cannot be scored."""
        text = validate_caption(caption, self.max_caption_chars)
        self._key(text)  # also refuses captions with no tokens at all (e.g. only "&nbsp;")
        return text

    def embed_text(self, caption: str, stream: Optional[str] = None) -> np.ndarray:
        """Normalised float32 (D,) embedding. `stream`: a player's typing stream key for prefix reuse."""
        if stream is not None and not isinstance(stream, str):
            raise TypeError("stream must be a string key or None")
        key = self._key(validate_caption(caption, self.max_caption_chars))
        self._count("requests")
        cached = self._captions.get(key)
        if cached is not None:
            self._count("cache_hits")
            return cached.copy()
        request = _Request(key, stream)
        with self._submit_lock:
            if self._closed:
                raise ScorerClosedError("the scorer is closed")
            try:
                self._queue.put_nowait(request)
            except queue.Full:
                self._count("busy")
                raise ScorerBusyError("The scorer is busy right now; please try again in a moment.") from None
        return request.future.result().copy()

    def embed_texts(self, captions: Sequence[str]) -> np.ndarray:
        """(N, D) normalised float32 embeddings, encoded in length-grouped batches (bulk path)."""
        if isinstance(captions, str) or not isinstance(captions, Sequence):
            raise TypeError("embed_texts expects a list of captions")
        keys = self._keys(captions)
        out = np.empty((len(keys), self.embed_dim), dtype=np.float32)
        missing: dict[tuple[int, ...], list[int]] = {}
        for i, key in enumerate(keys):
            cached = self._captions.get(key)
            if cached is not None:
                out[i] = cached
            else:
                missing.setdefault(key, []).append(i)
        todo = list(missing)
        for start in range(0, len(todo), BULK_CHUNK):
            chunk = todo[start:start + BULK_CHUNK]
            if self._closed:
                raise ScorerClosedError("the scorer is closed")
            self._yield_to_live()
            with self._compute:
                results = self.encoder.encode([Job(key) for key in chunk])
            for key, result in zip(chunk, results):
                emb = self._remember(key, result)
                out[missing[key]] = emb
        return out

    def embed_image(self, image) -> np.ndarray:
        """Normalised float32 (D,) embedding of a PIL image (compute once per target and store it)."""
        from PIL import Image
        if not isinstance(image, Image.Image):
            raise TypeError(f"embed_image expects a PIL image, got {type(image).__name__}")
        if self._closed:
            raise ScorerClosedError("the scorer is closed")
        with self._compute:
            emb = self.clip.encode_images([image])[0]
        return emb.cpu().numpy().astype(np.float32)

    def score(self, caption: str, image_embedding, stream: Optional[str] = None) -> float:
        """Cosine similarity between the caption and a (stored) image embedding."""
        image = as_unit_vector(image_embedding, self.embed_dim)
        text = self.embed_text(caption, stream=stream)
        return float(np.dot(text.astype(np.float64), image.astype(np.float64)))

    def forget_stream(self, stream: str) -> None:
        """Drop a stream's cached prefix (e.g. when a player's socket closes)."""
        self._streams.pop(stream)

    def embed_family(self, base: str, variants: Sequence[str]) -> np.ndarray:
        """(1 + len(variants), D) embeddings of `base` then each variant, exact, sharing prefixes.

        For captions that are edits of one base (engine/explain.py's leave-one-word-out): the
        base is encoded keeping its keys/values, then every variant starts from the tokens it
        shares with the base. Exact like the typing path (a causal text tower's state at a
        position depends only on the tokens before it), and about half the rows of encoding
        each variant from scratch. Validation and errors as `embed_texts`.
        """
        captions = [base, *variants]
        if not self.encoder.fast:
            return self.embed_texts(captions)
        keys = self._keys(captions)
        if self._closed:
            raise ScorerClosedError("the scorer is closed")
        out = np.empty((len(keys), self.embed_dim), dtype=np.float32)
        self._yield_to_live()
        with self._compute:
            first = self.encoder.encode([Job(keys[0], keep=True)])[0]
            out[0] = self._remember(keys[0], first)
            rest = self.encoder.encode([Job(key, prefix=first.prefix) for key in keys[1:]])
        for i, (key, result) in enumerate(zip(keys[1:], rest), start=1):
            out[i] = self._remember(key, result)
        return out

    def exclusive(self):
        """The scorer's compute lock: while it is held nothing of this scorer computes (e.g. to move its weights)."""
        return self._compute

    def pause_while_live(self, background) -> None:
        """Have `background.pause()` called before each live batch computes and `resume()` after.

        For work that must never slow a live draft, even on another core (a 2-core box's
        cores share memory bandwidth and cache): game/explain_process.py stops its
        process for the length of each batch. None removes it.
        """
        self._background = background

    def stop_pausing(self, background) -> None:
        """Undo `pause_while_live(background)`, if that is still the one registered."""
        if self._background is background:
            self._background = None

    def stats(self) -> dict:
        """Counters for logs and metrics."""
        with self._stats_lock:
            out = dict(self._stats)
        out.update(queue_depth=self._queue.qsize(), caption_cache=len(self._captions),
                   stream_cache=len(self._streams), stream_cache_bytes=self._streams.nbytes,
                   stream_evictions=self._streams.evictions, torch_threads=self.num_threads,
                   fast_path=self.encoder.fast, device=str(self.clip.device), precision=self.precision,
                   thread_tuning=self._tuner is not None, thread_times=self._thread_times,
                   thread_switches=self._tuner.switches if self._tuner is not None else 0)
        return out

    def close(self) -> None:
        """Stop the batching thread; pending and later requests raise ScorerClosedError."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)  # blocks only while the (running) thread frees a slot
        self._thread.join()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                item.future.set_exception(ScorerClosedError("the scorer is closed"))

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals ----------------------------------------------------------
    def _count(self, name: str, n: float = 1) -> None:
        with self._stats_lock:
            self._stats[name] += n

    def _key(self, text: str) -> tuple[int, ...]:
        key = self._token_keys.get(text)
        if key is not None:  # only keys that passed the checks below are kept
            return key
        try:
            key = self.encoder.key(text)
        except Exception as exc:  # the tokenizer choked on something validation let through
            raise CaptionError("The caption contains characters that cannot be read.") from exc
        if self.encoder.is_empty(key):
            raise CaptionError("Please write a caption: it has no words the judge can read.")
        self._token_keys.put(text, key)
        return key

    def _keys(self, captions: Sequence[str]) -> list[tuple[int, ...]]:
        """Token keys of validated captions; a CaptionError names the caption ("Caption 3: ...")."""
        keys = []
        for i, caption in enumerate(captions):
            try:
                keys.append(self._key(validate_caption(caption, self.max_caption_chars)))
            except CaptionError as exc:
                raise CaptionError(f"Caption {i + 1}: {exc}") from None
        return keys

    def _yield_to_live(self) -> None:
        """Bulk work (target and hint embedding) waits while live drafts are queued or about
        to compute, so an admin's bulk job does not stall players; bounded, so it never starves."""
        deadline = time.monotonic() + BULK_YIELD_S
        while (self._live_waiting.is_set() or self._queue.qsize()) and time.monotonic() < deadline:
            time.sleep(0.001)

    def _remember(self, key: tuple[int, ...], result: Result) -> np.ndarray:
        emb = result.embedding.numpy().astype(np.float32, copy=True)
        emb.setflags(write=False)  # shared by the cache and every waiter; callers get copies
        self._captions.put(key, emb)
        return emb

    def _run(self) -> None:
        while True:
            # Under load (requests queued while the last batch computed), everything
            # queued goes at once: waiting would only add latency (those players'
            # next drafts come hundreds of ms later), and one pass over the weights
            # costs about the same for 4 drafts as for 1. From idle, collect until
            # the queue has been quiet for one window (callers woken by the
            # previous batch resubmit a few tenths of a ms apart), but never wait
            # more than BATCH_WINDOW_CAP windows after the first request.
            try:
                item, backlog = self._queue.get_nowait(), True
            except queue.Empty:
                item, backlog = self._queue.get(), False
            if item is _STOP:
                return
            batch, stop = [item], False
            if backlog:
                while len(batch) < self.max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                self._run_batch(batch)
                if stop:
                    return
                continue
            first = time.monotonic()
            deadline = first + self.batch_window_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
                deadline = min(first + BATCH_WINDOW_CAP * self.batch_window_s,
                               time.monotonic() + self.batch_window_s)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[_Request]) -> None:
        try:
            self._process(batch)
        except BaseException as exc:  # never let the thread die with callers waiting
            log.exception("scoring batch failed")
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)

    def _process(self, batch: list[_Request]) -> None:
        owners: dict[tuple[int, ...], list[_Request]] = {}
        for request in batch:
            owners.setdefault(request.key, []).append(request)
        jobs, waiting = [], []
        for key, requests in owners.items():
            cached = self._captions.get(key)
            if cached is not None:  # filled by an earlier batch after this one was queued
                for request in requests:
                    request.future.set_result(cached)
                continue
            job = Job(key)
            best = 0
            for request in requests:
                if request.stream is None:
                    continue
                job.keep = True
                prefix = self._streams.get(request.stream)
                if prefix is not None:
                    n = common_prefix_len(prefix.tokens, key[:-1])
                    if n > best:
                        job.prefix, best = prefix, n
            jobs.append(job)
            waiting.append(requests)
        if not jobs:
            return
        with self._stats_lock:
            self._stats["batches"] += 1
        results = self._encode_isolated(jobs)
        prefixes: dict[tuple[int, ...], Prefix] = {}
        for job, requests, result in zip(jobs, waiting, results):
            if isinstance(result, BaseException):
                self._count("errors")
                for request in requests:
                    request.future.set_exception(result)
                continue
            self._count("encoded")
            self._count("tokens_reused", result.reused)
            self._count("tokens_computed", len(job.key) - result.reused)
            emb = self._remember(job.key, result)
            if result.prefix is not None:
                prefixes[job.key] = result.prefix
            for request in requests:
                request.future.set_result(emb)
        for request in batch:  # arrival order: a stream keeps its latest draft
            if request.stream is not None and request.key in prefixes:
                self._streams.put(request.stream, prefixes[request.key])

    def _encode_isolated(self, jobs: list[Job]) -> list:
        """Encode jobs together; if that fails, one by one, so one failure fails only its own callers."""
        self._live_waiting.set()
        with self._compute:
            self._live_waiting.clear()
            background = self._background
            if background is not None:
                background.pause()
            started, clock = time.perf_counter(), thread_times()
            try:
                results = self.encoder.encode(jobs)
                if self._tuner is not None:
                    rows = sum(len(job.key) - result.reused for job, result in zip(jobs, results))
                    want = self._tuner.observe(rows, time.perf_counter() - started)
                    if want != self.num_threads:
                        torch.set_num_threads(want)
                        self.num_threads = want
                return results
            except Exception:
                log.exception("batch of %d captions failed; retrying one by one", len(jobs))
            finally:
                took = time.perf_counter() - started
                split = split_wall_time(took, clock, thread_times())
                with self._stats_lock:
                    self._stats["compute_s"] += took
                    for state, seconds in (split or {}).items():
                        self._stats[f"compute_{state}_s"] += seconds
                if background is not None:
                    background.resume()
            results: list = []
            for job in jobs:
                try:
                    results.append(self.encoder.encode([job])[0])
                except Exception as exc:
                    results.append(exc)
            return results

