"""The embedded redis-server: one per instance folder, outlives its starter, durable across crashes."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from game.store import server as redis_server
from game.store import Store

ROOT = Path(__file__).resolve().parents[2]


def _servers_for(instance: Path) -> list[int]:
    """Pids of redis-server processes started with this instance's config file."""
    conf = str(instance / redis_server.CONF_NAME)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat.split(")")[-1].split()[0] == "Z":
            continue
        if any(conf.encode() in part for part in cmdline) or (
                b"redis-server" in cmdline[0] and str(instance).encode() in b" ".join(cmdline)):
            pids.append(int(entry.name))
    return pids


def _wait_dead(pid: int) -> None:
    while redis_server._pid_alive(pid):
        time.sleep(0.05)


@pytest.fixture
def instance(tmp_path):
    path = tmp_path / "instance"
    yield path
    redis_server.stop(str(path))


def test_config_is_durable_and_local_only(instance):
    client = redis_server.connect(str(instance))
    config = client.config_get("*")
    assert config["appendonly"] == "yes" and config["appendfsync"] == "always"
    assert config["port"] == "0"  # unix socket only
    assert Path(config["dir"]) == instance
    assert redis_server.is_running(str(instance))


def test_two_processes_connecting_at_once_start_one_server_that_outlives_them(instance):
    code = ("import sys; from game.store.server import connect; "
            "r = connect(sys.argv[1]); r.incr('starts'); print(r.info('server')['process_id'])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(instance)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    pids = {int(out.strip()) for out, _ in outputs}
    assert len(pids) == 1
    # Every starter has exited; the server is still there, alone, with all four writes.
    assert redis_server.is_running(str(instance))
    assert _servers_for(instance) == list(pids)
    assert int(redis_server.connect(str(instance)).get("starts")) == 4


def test_data_survives_a_clean_restart(instance):
    client = redis_server.connect(str(instance))
    client.set("kept", "yes")
    assert redis_server.stop(str(instance)) is True
    assert not redis_server.is_running(str(instance))
    assert redis_server.stop(str(instance)) is False
    assert redis_server.connect(str(instance)).get("kept") == b"yes"


def test_acknowledged_submissions_survive_kill_9(instance, clock):
    from tests.helpers.images import png_bytes
    import numpy as np
    store = Store(redis_server.connect(str(instance)), "test-tiny/random", clock=clock)
    for i in range(3):
        store.add_target("photo", png_bytes((i, 100, 100)), np.ones(8) + i, title=f"p{i}")
    puzzle = store.puzzles_for(store.today())[0].id
    results = [store.submit(f"crash-player-{i:03d}", puzzle, f"caption {i}", i / 100) for i in range(20)]
    pid = redis_server.server_pid(str(instance))
    os.kill(pid, signal.SIGKILL)  # no shutdown, no final save: only what was fsynced survives
    _wait_dead(pid)
    assert not redis_server.is_running(str(instance))
    # The existing client restarts the server on its next command (a crash is not a stop).
    assert store.best("crash-player-000", puzzle) == results[0].best
    assert redis_server.server_pid(str(instance)) not in (None, pid)
    after = Store(redis_server.connect(str(instance)), "test-tiny/random", clock=clock)
    for i, result in enumerate(results):
        assert after.best(f"crash-player-{i:03d}", puzzle) == result.best
    assert len(after.leaderboard(puzzle, limit=50)) == 20
    assert len(after.submission_log(after.today())) == 20


def test_a_stopped_server_stays_stopped_until_connect(instance):
    client = redis_server.connect(str(instance))
    client.set("k", "v")
    redis_server.stop(str(instance))
    import redis
    with pytest.raises(redis.ConnectionError):
        client.get("k")  # a stray client does not bring a deliberately stopped server back
    assert not redis_server.is_running(str(instance))
    assert redis_server.connect(str(instance)).get("k") == b"v"
    assert client.get("k") == b"v"  # and once started again, old clients reconnect


def test_long_instance_paths_get_a_short_socket(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    sock = redis_server.socket_path(str(deep))
    assert len(sock) <= 100 and sock == redis_server.socket_path(str(deep))
    # Never straight in the shared temp dir: in a directory only this user can enter.
    import stat
    import tempfile
    parent = os.path.dirname(sock)
    assert parent != tempfile.gettempdir()
    info = os.lstat(parent)
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700
    try:
        assert redis_server.connect(str(deep)).ping()
    finally:
        redis_server.stop(str(deep))


def test_a_socket_directory_others_can_enter_is_refused(tmp_path, monkeypatch):
    # Someone else's (or a world-writable) directory where our private one should be: refuse, never use it.
    runtime = tmp_path / "run"
    (runtime / "captionary").mkdir(parents=True)
    os.chmod(runtime / "captionary", 0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with pytest.raises(redis_server.EmbeddedRedisError, match="not a private directory"):
        redis_server.socket_path(str(tmp_path / ("d" * 60) / ("e" * 60)))


def test_embedded_redis_has_maxmemory_and_noeviction(tmp_path):
    instance = tmp_path / "i"
    try:
        client = redis_server.connect(str(instance), maxmemory="64mb")
        assert client.config_get("maxmemory")["maxmemory"] == str(64 * 1024 * 1024)
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert "maxmemory 64mb" in (instance / redis_server.CONF_NAME).read_text()
        # Full: a write is refused, and is recognised as such (plain and inside a script).
        client.set("kept", "yes")
        client.config_set("maxmemory", 1)
        with pytest.raises(redis.exceptions.RedisError) as plain:
            client.set("new", "x")
        assert redis_server.is_out_of_memory(plain.value)
        with pytest.raises(redis.exceptions.RedisError) as scripted:
            client.eval("return redis.call('SET', KEYS[1], 'x')", 1, "new")
        assert redis_server.is_out_of_memory(scripted.value)
        assert client.get("kept") == b"yes" and client.get("new") is None  # nothing evicted, nothing half-written
    finally:
        redis_server.stop(str(instance))


def test_redis_url_gives_a_plain_client(redis_url, redis_client):
    client = redis_server.connect("/nonexistent/unused", redis_url)
    client.set("via-url", "1")
    assert redis_client.get("via-url") == b"1"


# -- `flask --app game redis status|stop` ---------------------------------------------------------
def _redis_cli(tmp_path, *args):
    env = dict(os.environ, CAPTIONARY_INSTANCE_PATH=str(tmp_path))
    env.pop("REDIS_URL", None)
    return subprocess.run([sys.executable, "-m", "game.cli", "redis", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_redis_status_and_stop_never_start_a_server(tmp_path):
    out = _redis_cli(tmp_path, "status")
    assert out.returncode == 0, out.stderr
    assert "not running" in out.stdout
    assert not redis_server.is_running(tmp_path)  # asking did not start one

    client = redis_server.connect(str(tmp_path))
    client.set("cap:x", "1")
    pid = redis_server.server_pid(tmp_path)
    out = _redis_cli(tmp_path, "status")
    assert out.returncode == 0, out.stderr
    assert f"running, pid {pid}" in out.stdout and "keys:    1" in out.stdout and "noeviction" in out.stdout

    out = _redis_cli(tmp_path, "stop")
    assert out.returncode == 0, out.stderr
    assert f"stopped (was pid {pid})" in out.stdout
    assert not redis_server.is_running(tmp_path)
    assert "not running" in _redis_cli(tmp_path, "stop").stdout
    client.close()


def test_flask_redis_command_does_not_build_the_app(tmp_path):
    """The installed entry point: `flask --app game redis status` answers without starting Redis
    (building the app would start it)."""
    from importlib import metadata
    names = {ep.name for ep in metadata.entry_points(group="flask.commands")}
    if "redis" not in names:
        pytest.skip("the project is not installed in this interpreter (scripts/setup.sh installs it)")
    env = dict(os.environ, CAPTIONARY_INSTANCE_PATH=str(tmp_path))
    env.pop("REDIS_URL", None)
    out = subprocess.run([sys.executable, "-m", "flask", "--app", "game", "redis", "status"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "not running" in out.stdout
    assert not redis_server.is_running(tmp_path)
