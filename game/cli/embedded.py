"""`flask --app game redis status|stop`: see and stop the embedded Redis server.

Every `flask --app game ...` command and `play` start the instance folder's
embedded redis-server when it is not running, and it keeps running after them
(web processes and the worker share it). These two commands are how an admin
finds it and shuts it down. They never build the game app, so asking for the
status never starts a server: the group is registered as a Flask plugin command
(`flask.commands` entry point in pyproject.toml) and in `python -m game.cli`.
The instance folder is the app's own: CAPTIONARY_INSTANCE_PATH, else ./instance.
"""
from __future__ import annotations

import click

from game import config as cfg
from game.store import server


def _instance() -> str:
    return cfg.requested_instance_path() or cfg.default_instance_path()


@click.group("redis")
def redis_group():
    """The embedded Redis server of this instance folder."""


@redis_group.command("status")
def redis_status():
    """Whether it runs, its process, socket, data folder and memory."""
    import os
    url = os.environ.get("REDIS_URL")
    if url:
        click.echo(f"REDIS_URL is set: the game uses that server ({_redacted(url)}), not an embedded one.")
        return
    instance = _instance()
    sock = server.socket_path(instance)
    pid = server.server_pid(instance)
    if pid is None:
        click.echo(f"embedded redis: not running (instance folder {instance})")
        return
    client = server.connect_existing(instance)
    try:
        memory, keyspace = client.info("memory"), client.dbsize()
    finally:
        client.close()
    limit = int(memory.get("maxmemory", 0))
    click.echo(f"embedded redis: running, pid {pid}")
    click.echo(f"  socket:  {sock}")
    click.echo(f"  data:    {instance}")
    click.echo(f"  keys:    {keyspace}")
    click.echo(f"  memory:  {memory.get('used_memory_human', '?')} used of "
               f"{_size(limit) if limit else 'no limit'} ({memory.get('maxmemory_policy', '?')})")


@redis_group.command("stop")
def redis_stop():
    """Shut it down (everything written is already on disk). Web processes and workers
    using it get 'unavailable' errors until it is started again by `play` or any command."""
    instance = _instance()
    pid = server.server_pid(instance)
    try:
        stopped = server.stop(instance)
    except server.EmbeddedRedisError as exc:
        raise click.ClickException(str(exc)) from None
    if stopped:
        click.echo(f"embedded redis stopped (was pid {pid}); its data stays in {instance}")
    else:
        click.echo(f"embedded redis: not running (instance folder {instance})")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _redacted(url: str) -> str:
    """The URL without its password, for printing."""
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
