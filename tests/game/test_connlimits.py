"""One client cannot spoil it for others: caps on open websockets per player and per address,
new players per address, the client address behind a proxy, and a client that never reads
its socket while board pushes to everyone else go on (real Redis, real sockets)."""
from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time

import pytest

from harness.client import WSClient, new_player_cookie
from tests.helpers.web import TEST_CONFIG, make_app

CAPS = dict(WS_PER_PLAYER=2, WS_PER_ADDRESS=5, WS_OUTBOX=16, WS_SEND_TIMEOUT_S=1.0)


@pytest.fixture
def app(tmp_path, redis_url, redis_client, clock):
    """The test app with small caps (TEST_CONFIG lifts the per-address ones for other tests)."""
    return make_app(tmp_path, redis_url, clock, **CAPS)


def refused(url, cookie):
    import websocket
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        WSClient(url, cookie, origin=url)
    return info.value.status_code, json.loads(info.value.resp_body or b"{}").get("code")


def wait_for(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_sockets_per_player_are_capped_and_freed_on_close(app, live_server, seeded):
    url = live_server.url
    cookie = new_player_cookie(url)
    first, second = WSClient(url, cookie, origin=url), WSClient(url, cookie, origin=url)
    assert second.ask({"type": "ping"})["type"] == "pong"
    assert refused(url, cookie) == (429, "too_many_connections")
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'captionary_actions_refused_total{action="connect",code="too_many_connections"} 1.0' in metrics
    other = WSClient(url, new_player_cookie(url), origin=url)  # another player is not affected
    assert other.ask({"type": "ping"})["type"] == "pong"
    first.close()
    limits = app.extensions["conn_limits"]
    assert wait_for(lambda: limits.count(address="127.0.0.1") == 2)  # the slot came back on close
    third = WSClient(url, cookie, origin=url)
    assert third.ask({"type": "ping"})["type"] == "pong"
    for conn in (second, other, third):
        conn.close()


def test_sockets_per_address_are_capped(app, live_server, seeded):
    url = live_server.url
    opened = [WSClient(url, new_player_cookie(url), origin=url) for _ in range(5)]
    assert refused(url, new_player_cookie(url)) == (429, "too_many_connections")
    for conn in opened:
        conn.close()


def test_slots_of_a_dead_process_expire(redis_client):
    """A process killed with its sockets open never releases their slots: the lease runs out."""
    from game.web.connlimits import ConnLimits, TooManyConnections
    limits = ConnLimits(redis_client, per_player=1, per_address=10, lease_s=0.5)
    limits.acquire("player-a", "10.0.0.1")  # never released: its process "crashed"
    with pytest.raises(TooManyConnections) as info:
        limits.acquire("player-a", "10.0.0.1")
    assert info.value.which == "player"
    time.sleep(0.7)
    slot = limits.acquire("player-a", "10.0.0.1")
    limits.release(slot)
    assert limits.count(player_id="player-a") == 0
    assert not any(redis_client.ttl(k) == -1 for k in redis_client.keys("cap:ws:*"))  # keys expire too


def test_new_players_per_address_are_rate_limited(tmp_path, redis_url, redis_client, clock):
    app = make_app(tmp_path, redis_url, clock, NEW_PLAYER_RATE=0.001, NEW_PLAYER_BURST=2)
    browsers = [app.test_client() for _ in range(3)]
    assert browsers[0].get("/").status_code == 200
    assert browsers[1].get("/").status_code == 200
    resp = browsers[2].get("/api/state")
    assert resp.status_code == 429 and resp.get_json()["code"] == "too_many_new_players"
    assert resp.headers["Retry-After"]
    assert browsers[2].get_cookie("captionary") is None  # no identity was minted
    assert browsers[0].get("/api/state").status_code == 200  # players with a cookie are not affected
    assert browsers[2].get("/healthz").status_code == 200  # nor are health checks


def test_client_address_trusts_only_configured_proxy_hops(tmp_path, redis_url, redis_client, clock):
    limits = dict(NEW_PLAYER_RATE=0.001, NEW_PLAYER_BURST=1)
    # No trusted proxy: X-Forwarded-For is the client's own claim and is ignored.
    direct = make_app(tmp_path / "a", redis_url, clock, **limits)
    assert direct.test_client().get("/", headers={"X-Forwarded-For": "10.0.0.1"}).status_code == 200
    assert direct.test_client().get("/", headers={"X-Forwarded-For": "10.0.0.2"}).status_code == 429
    redis_client.flushall()
    # One trusted hop (nginx in front): the address nginx appended is the client's.
    proxied = make_app(tmp_path / "b", redis_url, clock, TRUSTED_PROXIES=1, **limits)
    assert proxied.test_client().get("/", headers={"X-Forwarded-For": "10.0.0.1"}).status_code == 200
    assert proxied.test_client().get("/", headers={"X-Forwarded-For": "10.0.0.2"}).status_code == 200
    # A client's forged first hop is not trusted: only the last (the proxy's own) entry counts.
    assert proxied.test_client().get(
        "/", headers={"X-Forwarded-For": "10.9.9.9, 10.0.0.1"}).status_code == 429


def test_connection_settings_are_checked_at_start(tmp_path, redis_url, redis_client, clock):
    from game.config import ConfigError
    for bad in (dict(WS_PER_PLAYER=-1), dict(TRUSTED_PROXIES="two"), dict(WS_OUTBOX=0)):
        with pytest.raises(ConfigError):
            make_app(tmp_path, redis_url, clock, **bad)
    assert TEST_CONFIG["WS_PER_ADDRESS"] == 0  # other tests connect many players from 127.0.0.1


def _frame(text: str) -> bytes:
    """One masked client text frame (RFC 6455 5.2)."""
    payload = text.encode()
    head = bytes([0x81])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _raw_subscriber(url: str, cookie: str, puzzle: str) -> socket.socket:
    """A websocket client that subscribes to a board and then never reads (a tiny receive buffer)."""
    host, port = url.split("//")[1].split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {url}\r\n"
               f"Cookie: {cookie}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:  # byte by byte: read the handshake answer and nothing after it
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    s.sendall(_frame(json.dumps({"type": "subscribe", "puzzles": [puzzle]})))
    return s


# Two ways a non-reader is found: its outbox (16 here) fills with many pushes; or a few large
# pushes, never enough to fill the outbox, leave one write blocked past WS_SEND_TIMEOUT_S (1 s).
@pytest.mark.parametrize("pushes, pad", [(150, 65536), (10, 1 << 20)], ids=["outbox_full", "send_timeout"])
def test_a_client_that_never_reads_does_not_delay_other_players_boards(app, live_server, seeded, pushes, pad):
    url, store, game = live_server.url, app.extensions["store"], app.extensions["game"]
    hub, limits = app.extensions["board_hub"], app.extensions["conn_limits"]
    slow_puzzle, puzzle = seeded[0].id, seeded[1].id
    slow = _raw_subscriber(url, new_player_cookie(url), slow_puzzle)
    watcher = WSClient(url, new_player_cookie(url), origin=url)
    # (the current board comes first, then "subscribed")
    assert watcher.ask({"type": "subscribe", "puzzles": [puzzle]}, "subscribed")["puzzles"] == [puzzle]
    assert wait_for(lambda: hub.channel_for(slow_puzzle) in hub._by_channel)
    assert limits.count(address="127.0.0.1") == 2
    try:
        # ~10 MB of pushes to the board the slow client watches: far more than the socket buffers
        # hold, so the old hub thread would have blocked writing to it for good.
        big = {"type": "board", "puzzle": slow_puzzle, "entries": [], "pad": "x" * pad}
        for _ in range(pushes):
            store.publish_board(slow_puzzle, big)
        start = time.monotonic()
        game.submit("player-typing-abcdef", {"puzzle": puzzle, "caption": "a green thing"})
        while True:
            msg = watcher.recv_until("board")
            if msg["puzzle"] == puzzle and msg["entries"]:
                break
        took = time.monotonic() - start
        print(f"board update reached the other player {took * 1000:.0f} ms after the submission, "
              f"behind {pushes} pushes of {pad // 1024} KiB to a client that never reads")
        assert took < 5.0  # generous: the figure above is what bench/ belongs to
        # The slow client was closed and its slot freed; the watcher is still served.
        assert wait_for(lambda: limits.count(address="127.0.0.1") == 1, timeout=15)
        assert watcher.ask({"type": "ping"}, "pong")["type"] == "pong"
    finally:
        slow.close()
        watcher.close()
