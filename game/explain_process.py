"""Explanations computed in a child process at the lowest CPU priority, on the judge's own weights.

Why a process and not a thread of the web process: an explanation is ~0.2-0.3 s of
compute (13 captions through the text tower; the image tower forward and backward).
On a niced thread of the web process, with the GIL switch interval at 1 ms and the
thread waiting for queued live drafts, bench/explain.py still measured the typing
load's p99 at 2.3-2.5x with explanations: the thread's Python holds the GIL the request
threads and the judge's batching thread need, and its compute on the second core made
the judge's thread tuner try (and keep) two threads on a core that was not free.
A child process has its own GIL and runs at nice 19, the kernel's lowest share of the
CPU whenever request threads want it (weight 15 vs 1024).

Nothing is copied: the model's tensors are moved to shared memory (`share_memory_`,
in place, when the lane is made, under the live scorer's compute lock: the move frees
the old memory a running matmul could still be reading) and handed to the child
by torch.multiprocessing, so both processes compute with the very same weights (the
numbers equal the live scorer's; tests hold them to 1e-5 of open_clip). Where the
shared-memory filesystem is too small for the weights (`cannot_share`: a container's
64 MB /dev/shm), the lane explains in the web process instead and logs how to fix it.
The child
is started with "spawn" (a fresh interpreter: forking a process full of threads and
an OpenMP pool is unsafe) on the first explanation, not at start-up, and started
again if it dies. It exits by itself when the web process goes away (its end of the
pipe reaches EOF). Like every "spawn" child it imports the parent's main module under
another name, so that module must be import-safe (gunicorn's, flask's, pytest's and
our scripts' are: their work sits under `if __name__ == "__main__"`).

A separate core is not enough on a 2-core box: the two cores share memory bandwidth
and cache, and a live batch ran up to ~1.6x longer beside a heatmap (bench/explain.py,
p99 ratio 1.6 with the child niced). So the live scorer stops the child for the length
of each live batch (`Scorer.pause_while_live`: SIGSTOP before, SIGCONT after, only while
a job is in flight): explanations run only while the judge has nothing to compute, and
on a box where typists keep the judge busy they take longer, never the typists. As it
only computes while the judge is idle, the child uses every core (its threads yield to
request threads at nice 19): 2 threads made word contributions 188 ms instead of 301
at the p50 under the bench's typing load.
A stopped child cannot notice its parent dying, so the kernel kills it then
(PR_SET_PDEATHSIG): that signal follows the *thread* that started the child, so start it
from a long-lived thread (game/explain.py's lane thread does).

`ExplainProcess` is used by one thread at a time (the lane thread); `pause`/`resume` come
from the live scorer's batching thread. CPU models only: a GPU judge keeps explanations
on the lane thread, where they cost the CPU almost nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from typing import Any, Optional

log = logging.getLogger("captionary.explain")

CHILD_NICE = 19
CHILD_THREADS = None  # every core this process may use: the child only runs while the judge is idle
START_TIMEOUT_S = 120.0  # a fresh interpreter imports torch and open_clip: seconds on a busy box


SHM_PATH = "/dev/shm"
SHM_MARGIN_BYTES = 64 << 20


def shm_free_bytes(path: str = SHM_PATH) -> Optional[int]:
    """Free bytes of the shared-memory filesystem torch shares tensors through; None if unknown."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def cannot_share(model) -> Optional[str]:
    """Why `model`'s weights cannot go to shared memory here (None: they can).

    Containers often mount a small /dev/shm (Docker: 64 MB); sharing a model larger than its
    free space would fail part way, or kill the process with SIGBUS when the pages are touched.
    """
    need = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    free = shm_free_bytes()
    if free is None:
        return f"{SHM_PATH} is missing"
    if free < need + SHM_MARGIN_BYTES:
        return (f"{SHM_PATH} has {free >> 20} MB free and the model needs {need >> 20} MB (+{SHM_MARGIN_BYTES >> 20}); "
                f"give it more (e.g. docker run --shm-size=1g)")
    return None


def explanation_scorer(clip, max_caption_chars: int, threads: Optional[int]):
    """The Scorer explanations compute with, in the child or on a GPU judge's lane thread.

    Bulk work only: a caption cache for repeated explanations, no typing streams to keep.
    """
    from engine.scorer import Scorer
    return Scorer(clip, max_caption_chars=max_caption_chars, cache_size=2048, stream_cache_size=1,
                  stream_cache_mb=1.0, num_threads=threads)


class ExplainProcessError(RuntimeError):
    """The explanation process could not start or died while working."""


class ExplainTimeout(ExplainProcessError):
    """The explanation process did not answer in time (it goes on and its late answer is dropped)."""


class ExplainProcess:
    """A spawned child that computes word contributions and heatmaps for one loaded CLIP."""

    def __init__(self, clip, *, max_caption_chars: int = 200, nice: int = CHILD_NICE,
                 threads: Optional[int] = CHILD_THREADS, model_lock=None):
        """`model_lock`: held while the weights move to shared memory, now (give the live scorer's
        `exclusive()`: moving a tensor frees its old memory, which a running matmul may still read)."""
        if clip.device.type != "cpu":
            raise ValueError("ExplainProcess shares CPU weights; a GPU judge explains on its lane thread")
        with model_lock if model_lock is not None else contextlib.nullcontext():
            clip.model.share_memory()  # in place: same tensors, same values, now in shared memory
        self.clip = clip
        self.max_caption_chars = int(max_caption_chars)
        self.nice = int(nice)
        self.threads = int(threads) if threads else (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        self._proc = None
        self._conn = None
        self._seq = 0
        self._lock = threading.Lock()  # one request at a time on the pipe
        self._working: Optional[int] = None  # the child's pid while it owes an answer (even a timed-out one)
        self._stopped: Optional[int] = None  # the pid `pause` stopped, until `resume`
        self.starts = 0
        self.pauses = 0

    # -- the live scorer's side (Scorer.pause_while_live) ---------------------------------------
    def pause(self) -> None:
        """Stop the child if it is computing (before a live batch)."""
        pid = self._working
        if pid is not None and self._stopped is None:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                return
            self._stopped = pid
            self.pauses += 1

    def resume(self) -> None:
        """Let a child stopped by `pause` go on (after the live batch)."""
        pid, self._stopped = self._stopped, None
        if pid is not None:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    # -- the parent's side ----------------------------------------------------------------------
    def words(self, caption: str, image_embedding, timeout: float):
        """engine.explain.word_contributions in the child."""
        import numpy as np
        return self._call("words", (caption, np.asarray(image_embedding, dtype=np.float32)), timeout)

    def heatmap(self, caption: str, image, timeout: float):
        """The caption's embedding, then engine.explain.relevance_map, in the child."""
        return self._call("heatmap", (caption, image.convert("RGB")), timeout)

    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _call(self, kind: str, args: tuple, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._start(deadline)
            self._seq += 1
            seq = self._seq
            self._working = self._proc.pid
            try:
                self._conn.send((seq, kind, args))
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._conn.poll(left):
                        raise ExplainTimeout(f"no {kind} explanation within {timeout:.0f} s")
                    got, ok, value = self._conn.recv()
                    if got == seq:  # earlier answers are of requests that timed out
                        break
            except (EOFError, OSError, BrokenPipeError) as exc:
                code = self._proc.exitcode if self._proc is not None else None
                self._stop()
                raise ExplainProcessError(f"the explanation process died (exit code {code})") from exc
            # Only now is the child idle: after a timeout it is still computing the job, and live
            # batches keep pausing it until its late answer is in (the next call drops that).
            self._working = None
        if ok:
            return value
        raise value

    def _start(self, deadline: float) -> None:
        import torch.multiprocessing as mp
        self._stop()
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        spec = {"clip": self.clip, "max_caption_chars": self.max_caption_chars,
                "nice": self.nice, "threads": self.threads}
        proc = ctx.Process(target=_child_main, args=(child, spec), name="captionary-explain", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self.starts += 1
        left = max(deadline - time.monotonic(), START_TIMEOUT_S)
        try:
            if not parent.poll(left):
                raise ExplainProcessError(f"the explanation process did not start within {left:.0f} s")
            ready = parent.recv()
        except (EOFError, OSError) as exc:
            self._stop()
            raise ExplainProcessError(f"the explanation process failed to start (exit code "
                                      f"{proc.exitcode}); see its error above") from exc
        log.info("explanation process %s started (nice %+d, %d thread): %s", proc.pid, self.nice,
                 self.threads, ready)

    def _stop(self) -> None:
        self._working = None
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            try:  # a child stopped by `pause` must run to see the closed pipe
                os.kill(self._proc.pid, signal.SIGCONT)
            except (ProcessLookupError, TypeError):
                pass
            self._proc.join(2)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(2)
        self._proc = self._conn = None


# -- the child's side ----------------------------------------------------------------------------

def _child_main(conn, spec: dict) -> None:
    """Serve (seq, kind, args) requests until the parent closes the pipe."""
    _die_with_parent()
    try:
        os.nice(spec["nice"])
    except OSError as exc:  # still correct, only not deprioritised
        log.warning("explanation process runs at normal priority (%s)", exc)
    from engine.explain import relevance_map, word_contributions
    from engine.scorer import configure_torch_threads
    import torch
    configure_torch_threads(spec["threads"])
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already fixed by something imported first: harmless
        pass
    clip = spec["clip"]
    scorer = explanation_scorer(clip, spec["max_caption_chars"], spec["threads"])
    conn.send(f"pid {os.getpid()}, {clip.describe()}")
    try:
        while True:
            try:
                seq, kind, args = conn.recv()
            except EOFError:
                return
            try:
                if kind == "words":
                    value = word_contributions(scorer, *args)
                elif kind == "heatmap":
                    caption, image = args
                    value = relevance_map(clip, image, scorer.embed_texts([caption])[0])
                else:
                    raise ValueError(f"unknown explanation {kind!r}")
                reply = (seq, True, value)
            except Exception as exc:  # the parent raises it; the process lives on
                reply = (seq, False, exc)
            try:
                conn.send(reply)
            except Exception as exc:  # a value that does not pickle (pickling precedes any write)
                conn.send((seq, False, ExplainProcessError(f"{type(reply[2]).__name__}: {reply[2]} ({exc})")))
    except (BrokenPipeError, EOFError, OSError):
        return
    finally:
        scorer.close()


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the thread that started it ends (see the module docstring)."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the closed pipe still ends it, unless stopped
        return
    if os.getppid() != parent:  # the parent went away before the prctl
        os._exit(0)
