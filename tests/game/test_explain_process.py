"""The explanation process (game/explain_process.py): same numbers, paused by live batches, never orphaned.

Real child processes (spawned interpreters sharing the tiny CLIP's weights), real signals.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.scorer import Scorer
from game.explain import ExplainLane
from game.service import ProtocolError

ROOT = Path(__file__).resolve().parents[2]


def state(pid: int) -> str:
    """The process state letter from /proc (R running, S sleeping, T stopped), or "" once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def wait_for(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture(scope="module")
def lane(tiny_clip):  # one child for the module: starting one costs seconds
    live = Scorer(tiny_clip)
    lane = ExplainLane(live, max_queue=2)
    yield lane
    lane.close()
    live.close()


def picture():
    img = Image.new("RGB", (64, 64), (30, 90, 200))
    img.paste((220, 30, 30), (8, 8, 40, 40))
    return img


def test_the_child_gives_the_live_judges_numbers(lane, tiny_clip):
    assert lane.isolated and lane.process is not None  # a CPU judge explains in a child process
    image = lane.live.embed_image(picture())
    got = lane.words("a red square on blue", image)
    pid = lane.process.pid()
    assert pid is not None and pid != os.getpid()
    assert os.getpriority(os.PRIO_PROCESS, pid) == 19
    full = lane.live.score("a red square on blue", image)
    assert abs(got.score - full) <= 1e-5
    for word, effect in zip(got.words, got.effects):
        variant = " ".join(w for w in got.words if w is not word)
        assert abs(effect - (full - lane.live.score(variant, image))) <= 1e-5
    heat = lane.heatmap("a red square", picture())
    from engine.explain import relevance_map
    here = relevance_map(tiny_clip, picture(), lane.live.embed_texts(["a red square"])[0])
    assert heat.grid.shape == here.grid.shape and float(np.abs(heat.grid - here.grid).max()) <= 1e-5
    assert abs(heat.score - here.score) <= 1e-5
    assert lane.process.starts == 1  # one child served both (the first test of the module)


def hold(process) -> int:
    """Stop the child as a live batch would, as if a job were in flight (the next job waits)."""
    pid = process.pid()
    process._working = pid
    process.pause()
    assert wait_for(lambda: state(pid) == "T", 5)
    return pid


def test_a_live_batch_stops_the_child_until_it_is_done(lane):
    lane.words("warm the child up", lane.live.embed_image(picture()))
    process = lane.process
    result = {}
    pid = hold(process)
    try:
        worker = threading.Thread(target=lambda: result.update(heat=lane.heatmap("a red square", picture())))
        worker.start()
        time.sleep(0.5)
        assert state(pid) == "T" and "heat" not in result  # no progress while stopped
    finally:
        process.resume()
    worker.join(30)
    assert "heat" in result and state(pid) in ("S", "R")
    assert process.pid() == pid


def test_a_timed_out_job_is_still_work_and_its_late_answer_is_dropped(lane):
    from game.explain_process import ExplainTimeout
    image = lane.live.embed_image(picture())
    lane.words("warm the child up", image)
    process = lane.process
    pid = hold(process)
    try:
        with pytest.raises(ExplainTimeout):
            process.words("a late red square", image, timeout=0.3)
        assert process._working == pid  # the child still owes that answer: live batches keep pausing it
    finally:
        process.resume()
    got = lane.words("a blue circle", image)  # the late answer to the first job is read and dropped
    assert got.words == ["a", "blue", "circle"] and process._working is None


def test_live_typing_pauses_a_running_explanation(lane):
    image = lane.live.embed_image(picture())
    lane.words("warm the child up", image)
    stop = threading.Event()

    def type_away():
        i = 0
        while not stop.is_set():
            i += 1
            lane.live.score(f"a typist's draft number {i}", image, stream="typist")
    typist = threading.Thread(target=type_away)
    typist.start()
    try:
        for i in range(5):
            lane.heatmap(f"a red square seen {i} times", picture())
    finally:
        stop.set()
        typist.join(10)
    assert lane.process.pauses > 0
    assert state(lane.process.pid()) in ("S", "R")  # every pause was resumed


def test_a_child_killed_mid_job_fails_that_job_and_the_next_gets_a_new_child(lane):
    image = lane.live.embed_image(picture())
    lane.words("warm the child up", image)
    process = lane.process
    starts = process.starts
    first = hold(process)  # the next job is in flight until the child is killed
    threading.Timer(0.3, lambda: os.kill(first, 9)).start()
    with pytest.raises(ProtocolError) as caught:
        lane.heatmap("a red square", picture())
    process.resume()
    assert caught.value.code == "busy"
    got = lane.words("a red square", image)
    assert got.words == ["a", "red", "square"]
    assert process.pid() not in (None, first) and process.starts == starts + 1


def test_the_in_thread_lane_of_a_gpu_judge_gives_the_same_numbers(lane, tiny_clip):
    """isolate=False (what a GPU judge uses): the lane thread computes, no child, same results."""
    in_thread = ExplainLane(lane.live, isolate=False)
    try:
        image = lane.live.embed_image(picture())
        here, there = in_thread.words("a red square on blue", image), lane.words("a red square on blue", image)
        assert in_thread.process is None and here.words == there.words
        assert max(abs(a - b) for a, b in zip(here.effects, there.effects)) <= 1e-5
        heat_here, heat_there = in_thread.heatmap("a blue sky", picture()), lane.heatmap("a blue sky", picture())
        assert float(np.abs(heat_here.grid - heat_there.grid).max()) <= 1e-5
        assert lane.live._background is lane.process  # only the child is paused by live batches
        in_thread.close()
        assert lane.live._background is lane.process  # closing another lane leaves the child's pausing
    finally:
        in_thread.close()


def test_too_little_shared_memory_keeps_explanations_in_the_web_process(tiny_clip, monkeypatch, caplog):
    """A container's small /dev/shm (Docker: 64 MB) cannot hold the weights: the lane computes itself, and says why."""
    import game.explain_process as explain_process
    monkeypatch.setattr(explain_process, "shm_free_bytes", lambda path=explain_process.SHM_PATH: 32 << 20)
    reason = explain_process.cannot_share(tiny_clip.model)
    assert "32 MB free" in reason and "--shm-size" in reason
    live = Scorer(tiny_clip)
    lane = ExplainLane(live)
    try:
        assert not lane.isolated and lane.process is None
        assert "cannot be shared with a child process" in caplog.text
        assert lane.words("a red square", live.embed_image(picture())).words == ["a", "red", "square"]
    finally:
        lane.close()
        live.close()


def test_a_stopped_child_dies_with_its_parent(tmp_path):
    """The parent is SIGKILLed while its child is stopped mid-job: the kernel kills the child too."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, threading, time
        sys.path.insert(0, {str(ROOT)!r})
        from PIL import Image
        from engine.clip_model import load_clip
        from engine.scorer import Scorer
        from game.explain import ExplainLane

        def main():
            live = Scorer(load_clip("test-tiny", "random"))
            lane = ExplainLane(live)
            lane.words("warm up", live.embed_image(Image.new("RGB", (64, 64))))
            lane.process._working = lane.process.pid()  # as if a job were in flight
            lane.process.pause()
            print(lane.process.pid(), flush=True)
            time.sleep(60)

        if __name__ == "__main__":
            main()
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        child = int(parent.stdout.readline())
        assert wait_for(lambda: state(child) == "T", 10)
        parent.kill()
        parent.wait(10)
        assert wait_for(lambda: state(child) in ("", "Z"), 10), f"child {child} outlived its parent"
    finally:
        parent.kill()
