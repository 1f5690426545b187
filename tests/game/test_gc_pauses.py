"""Garbage-collector pauses (game/gc_pauses.py): each collection timed, start-up objects frozen, /metrics.

The freeze runs in a child interpreter: frozen objects are never collected, and this
test process builds many apps.
"""
from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import pytest

from game import gc_pauses
from game.config import ConfigError, load
from tests.helpers.web import make_app


def test_every_collection_is_counted_and_timed_by_generation():
    tracker = gc_pauses.tracker()
    assert gc_pauses.tracker() is tracker and gc.callbacks.count(tracker) == 1  # one per process
    before = tracker.snapshot()
    garbage = [[] for _ in range(1000)]
    for item in garbage:
        item.append(item)  # cycles: only the collector frees them
    del garbage, item
    gc.collect(2)
    gc.collect(0)
    after = tracker.snapshot()
    assert after["collections"][2] >= before["collections"][2] + 1
    assert after["collections"][0] >= before["collections"][0] + 1
    assert after["seconds"][2] > before["seconds"][2]
    assert 0 < after["longest"][2] <= after["seconds"][2]


def test_freezing_moves_start_up_objects_out_of_every_collection():
    script = textwrap.dedent("""
        import gc, json
        from game import gc_pauses
        kept = [[i] for i in range(50_000)]  # alive at start-up, as a model's objects are
        garbage = [[] for _ in range(1000)]
        for g in garbage:
            g.append(g)
        del garbage, g  # cyclic garbage: collected first, never frozen
        frozen = gc_pauses.freeze_startup_objects()
        tracked = {id(o) for o in gc.get_objects()}
        print(json.dumps({"frozen": frozen, "count": gc.get_freeze_count(),
                          "kept_visible": sum(id(k) in tracked for k in kept)}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    import json
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["frozen"] == got["count"] >= 50_000
    assert got["kept_visible"] == 0  # the collector no longer walks them


def test_metrics_report_pauses_by_generation_and_frozen_objects(tmp_path, redis_url, redis_client, clock):
    from prometheus_client.parser import text_string_to_metric_families
    app = make_app(tmp_path, redis_url, clock)
    gc.collect()
    text = app.test_client().get("/metrics").get_data(as_text=True)
    samples = {(s.name, s.labels.get("generation")): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("captionary_gc_collections_total", "2")] >= 1
    assert samples[("captionary_gc_pause_seconds_total", "2")] > 0
    assert samples[("captionary_gc_longest_pause_seconds", "2")] > 0
    assert samples[("captionary_gc_frozen_objects", None)] == gc.get_freeze_count()
    assert not app.config["TESTING"] or gc.get_freeze_count() == 0  # auto: a test runner is not gunicorn


def test_a_bad_gc_freeze_setting_stops_start_up(tmp_path):
    with pytest.raises(ConfigError, match="GC_FREEZE"):
        load(str(tmp_path), {"GC_FREEZE": "sometimes"})
