"""Real server processes for the ops, fault and hardening runs: gunicorn as the Procfile runs it.

`Gunicorn` starts the Procfile's `web:` line (bash, so the line runs verbatim) on a
free 127.0.0.1 port with the tiny random CLIP and a shared REDIS_URL, waits for
/healthz, and stops it (SIGTERM, then SIGKILL) on exit. `seed_today` puts three
targets in the pool and freezes today's puzzles on the real clock (the servers run
on the real clock, not the tests' settable one); `seed_revealed_day` gives rooms a finished day to draw pictures
from. The settings are
harness.settings, as CAPTIONARY_* variables; players connect with
harness.client.WSClient.player. Imported by tests/ and by bench/.
"""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness.settings import MODEL_ID, environment

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procfile_web(port: int) -> str:
    line = next(l for l in (ROOT / "Procfile").read_text().splitlines() if l.startswith("web:"))
    return line.split(":", 1)[1].strip().replace("${PORT:-8000}", str(port))


def server_env(redis_url: str, instance: str, **extra) -> dict:
    """The environment of a server process: harness.settings (with `extra` config keys) as CAPTIONARY_*."""
    # PATH: the Procfile names `gunicorn`, which must be this interpreter's own (the
    # venv's bin/, first on PATH whether or not the venv is activated).
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               REDIS_URL=redis_url, CAPTIONARY_INSTANCE_PATH=instance, PYTHONUNBUFFERED="1")
    # One torch thread: several processes share a small CI machine (a benchmark passes TORCH_THREADS=None).
    env.update(environment(**{"TORCH_THREADS": 1, **extra}))
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


def tear_down(web: "Gunicorn | None", instance: str) -> None:
    """A benchmark's end: its web process, then the instance's embedded Redis, then the folder.

    Best effort, so a failing run still reports its own error rather than a teardown's.
    """
    import shutil
    from game.store import server as redis_server
    if web is not None:
        web.stop()
    try:
        redis_server.stop(instance)
    except Exception as exc:
        print(f"warning: could not stop the embedded Redis: {exc}", file=sys.stderr)
    shutil.rmtree(instance, ignore_errors=True)


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


def seed_revealed_day(redis_client, embed_dim: int, n: int = 3, model_id: str = MODEL_ID) -> list[str]:
    """For rooms: n targets shown on yesterday's (finished) puzzle day, and n fresh ones for today's
    (real clock); returns yesterday's target ids, the pictures a room of source "archive" may show."""
    import numpy as np
    from PIL import Image
    from game.store import RedisClock, Store
    now = RedisClock(redis_client)
    today = Store(redis_client, model_id, puzzles_per_day=n)
    yesterday = Store(redis_client, model_id, puzzles_per_day=n, clock=lambda: now() - 86400)
    rng = np.random.default_rng(1)
    for i in range(2 * n):
        if i == n:  # the first n make up yesterday; today's set then skips them (recently shown)
            shown = [p.target_id for p in yesterday.freeze_day(yesterday.today())]
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (30 * i, 200 - 20 * i, 90)).save(buf, "PNG")
        vec = rng.standard_normal(embed_dim).astype(np.float32)
        today.add_target("photo", buf.getvalue(), vec / np.linalg.norm(vec), title=f"room picture {i}")
    today.freeze_day(today.today())
    return shown
