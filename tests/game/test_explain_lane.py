"""game.explain's lane yields to the live scorer: it waits while live drafts are queued or computing,
and never longer than its limit (the tiny random CLIP, a real Scorer)."""
import threading
import time

import pytest

from engine.clip_model import load_clip
from engine.scorer import Scorer
from game.explain import yield_to_live


@pytest.fixture(scope="module")
def clip():
    return load_clip("test-tiny", "random")


@pytest.fixture
def scorer(clip):
    s = Scorer(clip, max_caption_chars=200)
    yield s
    s.close()


def test_explanations_wait_while_the_live_scorer_computes(clip, scorer):
    """game.explain.yield_to_live: no lane work beside a live batch, and never longer than its limit."""
    assert not scorer.busy()
    yield_to_live(scorer, limit_s=5.0)  # idle: returns at once
    with scorer._compute:  # a live batch is computing
        assert scorer.busy()
        t0 = time.monotonic()
        yield_to_live(scorer, limit_s=0.2)  # bounded: the lane never starves
        assert time.monotonic() - t0 >= 0.2
    done = threading.Event()
    scorer._compute.acquire()
    waiter = threading.Thread(target=lambda: (yield_to_live(scorer, limit_s=30.0), done.set()))
    waiter.start()
    assert not done.wait(0.3)  # still waiting while the batch computes
    scorer._compute.release()
    assert done.wait(5.0)
    waiter.join()
