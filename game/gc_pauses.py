"""Python's garbage collector in a web process: startup objects frozen, every pause measured.

Why: a full (generation 2) collection walks every container object the process
holds, with the GIL held and every thread stopped. After start-up that is
torch, open_clip (its tokenizer's tables), Flask and the judge's caches: about
a million objects. In bench/rooms_load.py (10 rooms x 8 typing players, one
gunicorn worker) the worker ran two such collections of 249 and 290 ms during
the load, and they were the tail: a draft's own score p99 was 174 ms with the
tiny judge, whose median is 13 ms. `gc.freeze()` after start-up moves those
objects to the permanent generation, which collections skip: the same run's
full collection then took 5 ms and the p99 was 34 ms (docs/scaling.md,
"Rooms, third pass").

Frozen objects are never collected, so freezing happens once, after a
collection, and only where an app owns its process: `GC_FREEZE` "auto" (the
default) freezes inside a gunicorn worker only, never in a test runner that
builds hundreds of apps in one process, nor in a CLI command; "true" or
"false" decide it outright.
The pause tracker reports to /metrics: collections, seconds paused and the
longest pause, by generation, and how many objects are frozen.
"""
from __future__ import annotations

import gc
import logging
import threading
import time

log = logging.getLogger(__name__)

GENERATIONS = (0, 1, 2)


class PauseTracker:
    """Times every collection of this process (one tracker per process: gc.callbacks is global)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}  # thread id -> start of the collection it is running
        self.collections = {g: 0 for g in GENERATIONS}
        self.seconds = {g: 0.0 for g in GENERATIONS}
        self.longest = {g: 0.0 for g in GENERATIONS}

    def __call__(self, phase: str, info: dict) -> None:
        me = threading.get_ident()
        if phase == "start":
            self._started[me] = time.perf_counter()
            return
        started = self._started.pop(me, None)
        generation = info.get("generation")
        if started is None or generation not in self.seconds:
            return
        took = time.perf_counter() - started
        with self._lock:
            self.collections[generation] += 1
            self.seconds[generation] += took
            self.longest[generation] = max(self.longest[generation], took)

    def snapshot(self) -> dict:
        with self._lock:
            return {"collections": dict(self.collections), "seconds": dict(self.seconds),
                    "longest": dict(self.longest), "frozen": gc.get_freeze_count()}


_tracker: PauseTracker | None = None
_tracker_lock = threading.Lock()


def tracker() -> PauseTracker:
    """This process's pause tracker, installed on first use."""
    global _tracker
    with _tracker_lock:
        if _tracker is None:
            _tracker = PauseTracker()
            gc.callbacks.append(_tracker)
        return _tracker


def freeze_startup_objects() -> int:
    """Collect once, then move every object alive now to the permanent generation; how many are frozen."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("gc: %d start-up objects frozen (full collections skip them) in %.0f ms", frozen,
             (time.perf_counter() - started) * 1000)
    return frozen
