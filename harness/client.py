"""The one websocket client of the tests and benchmarks, speaking the game's JSON protocol.

`WSClient(url, cookie, origin)` opens /ws with exactly the cookie and Origin
given (None: no cookie, no Origin header), which is what the security tests
need; `WSClient.player(url)` connects as a browser does: it loads the page for
a session cookie (or reuses one) and sends the page's Origin.
"""
from __future__ import annotations

import json
import time


def timed_messages(ws):
    """(arrival time, parsed message) for each frame of a raw websocket until it closes or fails.

    The benchmarks' reader threads time a reply the moment it arrives (perf_counter), before
    any bookkeeping of their own.
    """
    while True:
        try:
            raw = ws.recv()
        except Exception:  # closed by either side, or timed out: the reader's work is over
            return
        if not raw:
            return
        yield time.perf_counter(), json.loads(raw)


def new_player_cookie(base_url: str, session=None, timeout: float = 20.0) -> str:
    """Load the page as a new browser would and return its session cookie as a Cookie header value."""
    import requests
    session = session or requests.Session()
    session.get(base_url + "/", timeout=timeout)
    return f"captionary={session.cookies['captionary']}"


class WSClient:
    """One websocket connection to the game's /ws (the websocket-client library underneath, as `.ws`)."""

    def __init__(self, base_url: str, cookie: str | None = None, origin: str | None = None, *,
                 headers=(), timeout: float = 10.0, **options):
        import websocket
        self.base, self.cookie = base_url, cookie
        header = list(headers) + ([f"Cookie: {cookie}"] if cookie else [])
        self.ws = websocket.create_connection(base_url.replace("http://", "ws://") + "/ws", timeout=timeout,
                                              header=header, origin=origin, suppress_origin=origin is None,
                                              **options)

    @classmethod
    def player(cls, base_url: str, cookie: str | None = None, timeout: float = 20.0, **kwargs) -> "WSClient":
        """A player as a browser connects: GET / for the cookie (unless given), then /ws with the page's Origin."""
        if cookie is None:
            cookie = new_player_cookie(base_url, timeout=timeout)
        return cls(base_url, cookie, base_url, timeout=timeout, **kwargs)

    def send(self, message) -> None:
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def recv(self) -> dict:
        return json.loads(self.ws.recv())

    def recv_until(self, kind: str, limit: int = 100) -> dict:
        """The next message of `kind` (skipping pushes such as board updates)."""
        for _ in range(limit):
            msg = self.recv()
            if msg.get("type") == kind:
                return msg
        raise AssertionError(f"no {kind} message in {limit} messages")

    def ask(self, message, kind: str | None = None) -> dict:
        self.send(message)
        return self.recv_until(kind) if kind else self.recv()

    def frames_until_close(self, limit: int = 1000):
        """(messages, close code) reading until the server closes the socket."""
        import websocket
        messages = []
        for _ in range(limit):
            try:
                frame = self.ws.recv_frame()
            except (websocket.WebSocketConnectionClosedException, OSError):
                return messages, None
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else None
                return messages, code
            if frame.opcode == websocket.ABNF.OPCODE_TEXT:
                messages.append(json.loads(frame.data.decode()))
        return messages, None

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # already closed by the server or a killed process: nothing left to do
            pass
