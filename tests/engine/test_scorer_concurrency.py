"""The batching thread under concurrency: same results as sequential, back-pressure, failure isolation."""
import threading
import time

import numpy as np
import pytest

from engine.clip_model import load_clip
from engine.scorer import CaptionError, Scorer, ScorerBusyError, ScorerClosedError

TOL = 1e-5


@pytest.fixture(scope="module")
def clip():
    return load_clip("test-tiny", "random")


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.002)


def test_many_threads_get_the_same_results_as_sequential(clip):
    nouns = ["cat", "dog", "owl", "fox", "car", "boat", "tree", "moon"]
    work = {t: [f"{i} {nouns[(t + i) % 8]} {'and ' * (i % 5)}thread {t}" for i in range(12)] for t in range(24)}
    work[0] += ["shared caption", "shared caption"]
    work[1] += ["shared caption"]  # the same caption from several threads, maybe in one batch
    results, errors = {}, []
    with Scorer(clip, batch_window_ms=5) as scorer:
        barrier = threading.Barrier(len(work))

        def run(t):
            barrier.wait()
            try:
                for c in work[t]:  # odd threads type with a stream key, even ones do not
                    results[(t, c)] = scorer.embed_text(c, stream=f"t{t}" if t % 2 else None)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(t,)) for t in work]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        stats = scorer.stats()
    assert not errors
    sequential = {c: clip.encode_texts_reference([c])[0].numpy() for cs in work.values() for c in cs}
    assert len(results) == sum(len(set(cs)) for cs in work.values())
    for (t, c), got in results.items():
        assert np.abs(got - sequential[c]).max() <= TOL, (t, c)
    assert stats["batches"] < stats["requests"]  # requests really were batched together


def test_full_queue_raises_busy_instead_of_waiting(clip):
    with Scorer(clip, max_queue=2, batch_window_ms=0) as scorer:
        results, errors = {}, []

        def call(caption):
            try:
                results[caption] = scorer.embed_text(caption)
            except BaseException as exc:
                errors.append(exc)

        scorer._compute.acquire()  # stall the model so requests pile up
        try:
            first = threading.Thread(target=call, args=("first in",))
            first.start()
            wait_until(lambda: scorer.stats()["queue_depth"] == 0 and scorer._compute.locked())
            time.sleep(0.05)  # the batching thread has taken "first in" and waits for the model
            waiting = [threading.Thread(target=call, args=(c,)) for c in ("second", "third")]
            for th in waiting:
                th.start()
            wait_until(lambda: scorer.stats()["queue_depth"] == 2)
            started = time.monotonic()
            with pytest.raises(ScorerBusyError):
                scorer.embed_text("one too many")
            assert time.monotonic() - started < 1.0  # refused at once
            assert scorer.stats()["busy"] == 1
            with pytest.raises(CaptionError):  # bad input is still refused before the queue
                scorer.embed_text("")
        finally:
            scorer._compute.release()
        for th in [first, *waiting]:
            th.join(timeout=10)
        assert not errors and set(results) == {"first in", "second", "third"}
        for caption, got in results.items():
            assert np.abs(got - clip.encode_texts_reference([caption])[0].numpy()).max() <= TOL
        assert np.abs(scorer.embed_text("one too many")
                      - clip.encode_texts_reference(["one too many"])[0].numpy()).max() <= TOL


def test_a_failing_caption_fails_only_its_own_callers(clip):
    with Scorer(clip, batch_window_ms=30) as scorer:
        poison = scorer.encoder.key("poisoned caption")
        real_encode = scorer.encoder.encode

        def encode(jobs, grouping=True):  # fault injection: this key cannot be encoded
            if any(job.key == poison for job in jobs):
                raise RuntimeError("simulated model failure")
            return real_encode(jobs, grouping)

        scorer.encoder.encode = encode
        results, errors = {}, {}
        captions = ["good one", "good two", "poisoned caption", "good three"]

        def call(c):
            try:
                results[c] = scorer.embed_text(c)
            except BaseException as exc:
                errors[c] = exc

        threads = [threading.Thread(target=call, args=(c,)) for c in captions]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert set(errors) == {"poisoned caption"} and isinstance(errors["poisoned caption"], RuntimeError)
        for c in ("good one", "good two", "good three"):
            assert np.abs(results[c] - clip.encode_texts_reference([c])[0].numpy()).max() <= TOL
        assert scorer.stats()["errors"] == 1
        assert scorer._thread.is_alive()
        assert np.abs(scorer.embed_text("after the failure")
                      - clip.encode_texts_reference(["after the failure"])[0].numpy()).max() <= TOL


def test_close_fails_pending_requests_and_stops_the_thread(clip):
    scorer = Scorer(clip, batch_window_ms=0)
    errors = []

    def call(c):
        try:
            scorer.embed_text(c)
        except BaseException as exc:
            errors.append(exc)

    scorer._compute.acquire()
    threads = [threading.Thread(target=call, args=(f"pending {i}",)) for i in range(3)]
    for th in threads:
        th.start()
    wait_until(lambda: scorer._compute.locked() and scorer.stats()["queue_depth"] >= 1)
    closer = threading.Thread(target=scorer.close)
    closer.start()
    time.sleep(0.05)
    scorer._compute.release()
    closer.join(timeout=10)
    for th in threads:
        th.join(timeout=10)
    assert not scorer._thread.is_alive()
    # The batch being computed finishes; anything still queued is failed, never left hanging.
    assert all(isinstance(e, ScorerClosedError) for e in errors)
    with pytest.raises(ScorerClosedError):
        scorer.embed_text("late")


def test_bulk_and_live_paths_share_the_model_safely(clip):
    captions = [f"bulk caption number {i}" for i in range(60)]
    live = [f"live caption {i}" for i in range(30)]
    with Scorer(clip) as scorer:
        out = {}

        def bulk():
            out["bulk"] = scorer.embed_texts(captions)

        th = threading.Thread(target=bulk)
        th.start()
        live_out = [scorer.embed_text(c, stream="live") for c in live]
        th.join()
    assert np.abs(out["bulk"] - clip.encode_texts_reference(captions).numpy()).max() <= TOL
    assert np.abs(np.stack(live_out) - clip.encode_texts_reference(live).numpy()).max() <= TOL


def test_bulk_work_lets_live_drafts_go_first(clip):
    """embed_texts works in chunks and yields the model to queued live drafts between them."""
    bulk_captions = [f"bulk hint word {i}" for i in range(64 * 4)]
    order = []
    with Scorer(clip, batch_window_ms=0) as scorer:
        scorer._compute.acquire()  # both the bulk job and the live draft will be waiting
        try:
            bulk = threading.Thread(target=lambda: (scorer.embed_texts(bulk_captions), order.append("bulk")))
            bulk.start()
            time.sleep(0.05)
            live = threading.Thread(target=lambda: (scorer.embed_text("a live draft", stream="p"),
                                                    order.append("live")))
            live.start()
            wait_until(lambda: scorer._live_waiting.is_set())
        finally:
            scorer._compute.release()
        bulk.join(timeout=60)
        live.join(timeout=60)
    assert order == ["live", "bulk"]  # served after at most one bulk chunk, not after all four


def test_thread_tuner_follows_the_cheaper_thread_count():
    """Measured cost per row decides; trials of the other count come back, and a collapse ends one at once."""
    from engine.scorer import ThreadTuner
    tuner = ThreadTuner((1, 2))
    cost = {1: 0.010, 2: 0.006}  # seconds per (row + overhead): 2 threads faster (idle box)

    def run(batches):
        seen = []
        for _ in range(batches):
            n = tuner.current
            seen.append(n)
            tuner.observe(10, cost[n] * (10 + ThreadTuner.OVERHEAD_ROWS))
        return seen

    run(ThreadTuner.EXPLORE_EVERY + ThreadTuner.TRIAL)
    assert tuner.home == 2 and tuner.current == 2 and tuner.switches == 1
    cost[2] = 0.080  # another process took a core: 2 threads collapse
    seen = run(2000)
    assert tuner.home == 1 and seen.count(1) > 0.95 * len(seen) and tuner.switches == 2
    collapsed = [i for i, n in enumerate(seen) if n == 2]
    # Once back on 1, each later trial of 2 threads costs one batch (its warm-up, 8x the home
    # cost, counts as a collapse at once), and lost trials come less and less often.
    assert 3 <= len(collapsed) <= 8
    assert all(b - a > 1 for a, b in zip(collapsed, collapsed[1:]))  # never two collapsed batches in a row
    assert tuner.explore_every > ThreadTuner.EXPLORE_EVERY
    cost[2] = 0.004  # the other process finished: 2 threads win again at the next trial
    run(2 * ThreadTuner.MAX_EXPLORE_EVERY)
    assert tuner.home == 2 and tuner.switches == 3


def test_configured_threads_are_not_tuned(clip):
    with Scorer(clip, num_threads=1) as scorer:
        stats = scorer.stats()
    assert stats["torch_threads"] == 1 and not stats["thread_tuning"]
