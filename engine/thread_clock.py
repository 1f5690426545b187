"""Where a thread's wall time went: on a core, waiting for one, or blocked.

The thread's CPU clock says how long it ran on a CPU; Linux also keeps, per
thread, the nanoseconds it was runnable but waited in a run queue for a CPU
(/proc/thread-self/schedstat).
Over a stretch of wall time, what is left after both is time the thread was
blocked: waiting for a lock (for a Python thread, most often the GIL), for I/O,
or for torch's other intra-op threads to finish their share.

The judge reads this around every batch (engine/scorer.py) and /metrics reports
the split (game/web/ops.py), because "the judge computes 90% of the time" alone
does not say whether the batches are slow because the model is big, because the
judge's thread waits for a core other threads hold, or because it waits for the
GIL between torch calls; each has a different remedy (a faster or second core,
fewer busy threads beside it, fewer GIL round trips per batch). In
bench/rooms_load.py with the full-size judge on a 2-core box the judge's
thread was on a core only about half of its batches' wall time
(docs/scaling.md, "Rooms, third pass").

Where the file does not exist (not Linux, or a kernel built without scheduler
statistics) `thread_times()` returns None and callers report nothing.
"""
from __future__ import annotations

import time
from typing import NamedTuple, Optional

SCHEDSTAT = "/proc/thread-self/schedstat"
STATES = ("on_cpu", "waiting_for_cpu", "blocked")  # the parts `split_wall_time` returns, in this order


class ThreadTimes(NamedTuple):
    """Seconds the calling thread has run on a CPU, and waited runnable for one, since it started."""

    on_cpu_s: float
    waiting_for_cpu_s: float


def thread_times(path: str = SCHEDSTAT) -> Optional[ThreadTimes]:
    """The calling thread's scheduler times, or None where the kernel does not provide them.

    Time on a CPU comes from the thread's CPU clock, not from the file: the file's
    first field is only brought up to date when the thread is switched out or at a
    scheduler tick, so read by a running thread it lags by up to a tick (4 ms), as
    much as a whole small batch. The run-queue wait accrues only while the thread
    is not running, so the file's second field is current whenever it can read it.
    """
    try:
        with open(path, "rb") as f:
            fields = f.read().split()
        waiting_ns = int(fields[1])
    except (OSError, ValueError, IndexError):
        return None
    return ThreadTimes(time.thread_time(), waiting_ns / 1e9)


def split_wall_time(wall_s: float, before: Optional[ThreadTimes],
                    after: Optional[ThreadTimes]) -> Optional[dict[str, float]]:
    """Seconds of `wall_s` on a CPU, waiting for a CPU, and blocked; None without both readings.

    The kernel's clocks and the caller's wall clock tick apart, so a reading can
    exceed `wall_s` by a little: the parts are clipped to it, blocked to >= 0.
    """
    if before is None or after is None:
        return None
    on_cpu = min(max(after.on_cpu_s - before.on_cpu_s, 0.0), wall_s)
    waiting = min(max(after.waiting_for_cpu_s - before.waiting_for_cpu_s, 0.0), wall_s - on_cpu)
    return dict(zip(STATES, (on_cpu, waiting, max(wall_s - on_cpu - waiting, 0.0))))
