"""Play with friends across processes: the players of one room on two gunicorn web processes
(the Procfile's line, one shared Redis) see each other's joins, live bars, lock-ins and reveal.

Nothing about a room lives in a process's memory: a draft scored on one process reaches a
player on the other through Redis pub/sub, and either process may end the round."""
from __future__ import annotations

from harness import servers
from harness.client import WSClient, new_player_cookie


def until(ws, kind, check=lambda m: True, limit=300) -> dict:
    for _ in range(limit):
        msg = ws.recv()
        if msg.get("type") == kind and check(msg):
            return msg
    raise AssertionError(f"no {kind} message that passes the check")


def test_one_room_on_two_web_processes(redis_url, redis_client, tmp_path, tiny_clip):
    servers.seed_revealed_day(redis_client, tiny_clip.embed_dim)
    with servers.Gunicorn(redis_url, tmp_path, "web-a") as web_a, servers.Gunicorn(redis_url, tmp_path, "web-b") as web_b:
        web_a.wait_ready()
        web_b.wait_ready()
        host = WSClient.player(web_a.url)
        ann = WSClient.player(web_b.url, new_player_cookie(web_b.url))
        bob = WSClient.player(web_a.url)
        try:
            code = host.ask({"type": "room_create", "nickname": "Hosty", "rounds": 1, "seconds": 300},
                            "room_created")["room"]
            for ws, name in ((host, "Hosty"), (ann, "Ann"), (bob, "Bob")):
                ws.send({"type": "room_join", "room": code, "nickname": name})
                assert ws.recv_until("room_joined")["room"] == code
            # The host on web-a sees Ann, who joined on web-b, online.
            seen = until(host, "room", lambda s: len([p for p in s["players"] if p["online"]]) == 3)
            pubs = {p["nickname"]: p["player"] for p in seen["players"]}

            host.send({"type": "room_start", "room": code})
            for ws in (host, ann, bob):
                until(ws, "room", lambda s: s["phase"] == "round")
            # Ann types on web-b; Bob on web-a sees her bar (a score, never her words).
            score = ann.ask({"type": "room_draft", "seq": 1, "room": code, "round": 1, "caption": "a hidden phrase"},
                            "room_score")
            bars = until(bob, "room_bars", lambda m: pubs["Ann"] in m["bars"])
            assert abs(bars["bars"][pubs["Ann"]] - score["score"]) < 1e-5
            assert "hidden" not in str(bars)
            # Bob drafts on web-a; Ann sees it on web-b.
            bob.ask({"type": "room_draft", "seq": 1, "room": code, "round": 1, "caption": "a cow"}, "room_score")
            until(ann, "room_bars", lambda m: pubs["Bob"] in m["bars"])
            # Everyone locks in, on both processes: one reveal, the same everywhere.
            for ws, caption in ((host, "a field"), (ann, "a hidden phrase"), (bob, "a cow")):
                ws.send({"type": "room_lock", "room": code, "round": 1, "caption": caption})
            finals = [until(ws, "room", lambda s: s["phase"] == "over") for ws in (host, ann, bob)]
            assert len({str(f["result"]) for f in finals}) == 1
            assert sorted(e["points"] for e in finals[0]["result"]["entries"]) == [10, 20, 30]
            assert [p["total"] for p in finals[1]["podium"]] == [30, 20, 10]
        finally:
            for ws in (host, ann, bob):
                ws.close()
