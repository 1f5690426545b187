"""Faults on real processes: kill -9 Redis mid-stream, two gunicorn web processes on one Redis, kill -9 one.

The scenarios live in harness/faults.py (bench/hardening.py runs them too and
prints the figures). Killing a generator worker mid-job is covered by
tests/test_worker_kill.py, which runs `python -m game.generation.worker` processes for real.
"""
from __future__ import annotations

from harness import faults


def test_kill_9_redis_mid_stream_loses_no_acknowledged_submission(tmp_path, tiny_clip):
    m = faults.redis_kill_scenario(tmp_path, tiny_clip.embed_dim, players=3)
    print(m)
    assert m["acked_before_kill"] > 0 and m["acked_after_restart"] > 0  # the stream ran on both sides of the kill
    assert m["lost_acks"] == 0, m["lost_examples"]
    assert m["duplicates"] == 0
    # During the outage players got well-formed errors (the page shows them and lets them retry).
    assert set(m["error_codes"]) <= {"unavailable", "busy"}


def test_two_web_processes_share_one_board_and_survive_losing_one(redis_url, redis_client, tmp_path, tiny_clip):
    m = faults.two_webs_scenario(redis_url, redis_client, tmp_path, tiny_clip.embed_dim)
    print(m)
    assert m["push_seen"] and m["logged_once"]
    assert m["survivor_errors"] == 0 and m["survivor_reconnects"] == 0
    assert m["survivor_scores_after_kill"] > 0
    assert m["movers_reconnected"] and m["movers_resumed"]
    assert m["lost_acks"] == 0 and m["duplicates"] == 0
