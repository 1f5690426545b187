"""engine/thread_clock.py: a thread's wall time split into on a core, waiting for one, and blocked."""
import os
import threading
import time

import pytest

from engine.thread_clock import SCHEDSTAT, ThreadTimes, split_wall_time, thread_times

linux_only = pytest.mark.skipif(not os.path.exists(SCHEDSTAT), reason="no per-thread scheduler statistics here")


def in_thread(fn):
    """fn's result, run on a fresh thread (so its times are that thread's alone)."""
    out = {}
    t = threading.Thread(target=lambda: out.update(result=fn()))
    t.start()
    t.join()
    return out["result"]


def measured(work):
    def run():
        started, before = time.perf_counter(), thread_times()
        work()
        return split_wall_time(time.perf_counter() - started, before, thread_times())
    return in_thread(run)


@linux_only
def test_a_spinning_thread_is_on_a_core_and_a_sleeping_one_blocked():
    def spin():
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            pass

    busy = measured(spin)
    assert busy["on_cpu"] + busy["waiting_for_cpu"] >= 0.25, busy  # runnable all along (on a shared box it may wait)
    assert busy["on_cpu"] > 0.05 and busy["blocked"] < 0.05, busy
    idle = measured(lambda: time.sleep(0.3))
    assert idle["blocked"] >= 0.25 and idle["on_cpu"] < 0.05, idle


@linux_only
def test_times_are_the_calling_threads_own():
    """Another thread's spinning does not count for this one."""
    before = thread_times()
    spinner = threading.Thread(target=lambda: sum(range(3_000_000)))
    spinner.start()
    spinner.join()
    after = thread_times()
    assert after.on_cpu_s - before.on_cpu_s < 0.05


def test_no_statistics_means_none(tmp_path):
    assert thread_times(str(tmp_path / "missing")) is None
    garbage = tmp_path / "schedstat"
    garbage.write_text("not numbers\n")
    assert thread_times(str(garbage)) is None
    garbage.write_text("")
    assert thread_times(str(garbage)) is None
    assert split_wall_time(1.0, None, ThreadTimes(1, 1)) is None
    assert split_wall_time(1.0, ThreadTimes(1, 1), None) is None


def test_the_split_adds_up_to_the_wall_time_and_is_clipped():
    split = split_wall_time(1.0, ThreadTimes(10.0, 2.0), ThreadTimes(10.5, 2.25))
    assert split == pytest.approx({"on_cpu": 0.5, "waiting_for_cpu": 0.25, "blocked": 0.25})
    # The kernel's clock ran ahead of the caller's: never more than the wall time, never negative.
    split = split_wall_time(1.0, ThreadTimes(10.0, 2.0), ThreadTimes(11.2, 2.5))
    assert split == {"on_cpu": 1.0, "waiting_for_cpu": 0.0, "blocked": 0.0}
    split = split_wall_time(1.0, ThreadTimes(10.0, 2.0), ThreadTimes(10.8, 2.5))
    assert split == pytest.approx({"on_cpu": 0.8, "waiting_for_cpu": 0.2, "blocked": 0.0})
