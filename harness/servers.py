"""Real server processes for the ops, fault and hardening runs: gunicorn as the Procfile runs it.

`Gunicorn` starts the Procfile's `web:` line (bash, so the line runs verbatim) on a
free 127.0.0.1 port with the tiny random CLIP and a shared REDIS_URL, waits for
/healthz, and stops it (SIGTERM, then SIGKILL) on exit. `seed_today` puts three
targets in the pool and freezes today's puzzles on the real clock (the servers run
on the real clock, not the tests' settable one). `Player` is a websocket client
that loads a page first for its cookie, like a browser. Imported by tests/ and by
bench/ (harness is installed with the project).
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_ID = "test-tiny/random"
SECRET = "hardening-test-secret-0123456789"  # shared by every web process: one cookie works on all


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procfile_web(port: int) -> str:
    line = next(l for l in (ROOT / "Procfile").read_text().splitlines() if l.startswith("web:"))
    return line.split(":", 1)[1].strip().replace("${PORT:-8000}", str(port))


def server_env(redis_url: str, instance: str, **extra) -> dict:
    # PATH: the Procfile names `gunicorn`, which must be this interpreter's own (the
    # venv's bin/, first on PATH whether or not the venv is activated).
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), REDIS_URL=redis_url, CAPTIONARY_INSTANCE_PATH=instance, CAPTIONARY_SECRET_KEY=SECRET,
               CAPTIONARY_CLIP_MODEL="test-tiny", CAPTIONARY_CLIP_PRETRAINED="random",
               CAPTIONARY_IMPORT_STARTER_PHOTOS="0", CAPTIONARY_TORCH_THREADS="1", PYTHONUNBUFFERED="1",
               # Every test client is 127.0.0.1: no per-address caps (game/web/connlimits.py) unless a test sets them.
               CAPTIONARY_WS_PER_ADDRESS="0", CAPTIONARY_NEW_PLAYER_RATE="1000", CAPTIONARY_NEW_PLAYER_BURST="100000")
    env.update({f"CAPTIONARY_{k}": str(v) for k, v in extra.items()})
    return env


class Gunicorn:
    """One web process group (gunicorn master + its worker) from the Procfile line."""

    def __init__(self, redis_url: str, workdir: Path, name: str = "web", port: int | None = None, **settings):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        instance = Path(workdir) / f"{name}-instance"
        instance.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(workdir) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["bash", "-c", "exec " + procfile_web(self.port)], cwd=ROOT,
                                     env=server_env(redis_url, str(instance), **settings),
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 90.0) -> "Gunicorn":
        import requests
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer /healthz in {timeout}s:\n{self.log()}")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill9(self) -> None:
        """Kill the whole process group at once (master and worker): a machine dying."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()
        try:  # the worker of a killed master must not outlive it
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def seed_today(redis_client, embed_dim: int, n: int = 3, model_id: str = MODEL_ID) -> list[str]:
    """n targets with seeded random unit embeddings; returns today's puzzle ids (real clock)."""
    import numpy as np
    from PIL import Image
    from game.store import Store
    store = Store(redis_client, model_id)
    rng = np.random.default_rng(0)
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (40 * i, 100, 200 - 40 * i)).save(buf, "PNG")
        vec = rng.standard_normal(embed_dim).astype(np.float32)
        store.add_target("photo", buf.getvalue(), vec / np.linalg.norm(vec), title=f"seed {i}")
    return [p.id for p in store.freeze_day(store.today())]


class Player:
    """A websocket player: GET / for the cookie (or reuse one), then /ws with the page's Origin."""

    def __init__(self, base_url: str, cookie: str | None = None, timeout: float = 20.0):
        import requests
        import websocket
        if cookie is None:
            session = requests.Session()
            session.get(base_url + "/", timeout=timeout)
            cookie = f"captionary={session.cookies['captionary']}"
        self.cookie, self.base = cookie, base_url
        self.ws = websocket.create_connection(base_url.replace("http://", "ws://") + "/ws", timeout=timeout,
                                              header=[f"Cookie: {cookie}"], origin=base_url)

    def send(self, msg) -> None:
        self.ws.send(msg if isinstance(msg, str) else json.dumps(msg))

    def recv(self) -> dict:
        return json.loads(self.ws.recv())

    def recv_until(self, kind: str, limit: int = 100) -> dict:
        for _ in range(limit):
            msg = self.recv()
            if msg.get("type") == kind:
                return msg
        raise AssertionError(f"no {kind} in {limit} messages")

    def ask(self, msg, kind: str | None = None) -> dict:
        self.send(msg)
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
        except Exception:
            pass
