"""`flask --app game play`: one command from a fresh checkout to a playable game.

It starts the embedded Redis once (unless REDIS_URL points elsewhere), makes
sure today's puzzles exist (the app factory already imported the starter
photos), then runs the web server the way the Procfile does: gunicorn with
the gthread worker (flask-sock holds one thread per open websocket) on
127.0.0.1:8000. Ctrl-C, or SIGTERM as `kill` and process managers send it,
stops gunicorn and, if this command started it, the embedded Redis (its
append-only file is fsynced on every write, so nothing acknowledged is lost). `--server werkzeug` runs Flask's threaded development
server instead, for machines without gunicorn.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

import click
from flask import current_app


def gunicorn_argv(host: str, port: int, threads: int, workers: int) -> list[str]:
    """The Procfile's `web:` command as an argv (kept identical so `play` tests what production runs)."""
    return [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--threads", str(threads),
            "--workers", str(workers), "--bind", f"{host}:{port}", "--graceful-timeout", "5",
            "game:create_app()"]


@click.command("play")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=lambda: int(os.environ.get("PORT", 8000)), show_default="8000 or $PORT", type=int,
              help="Port to listen on.")
@click.option("--threads", default=128, show_default=True, help="gunicorn threads (one per open websocket).")
@click.option("--workers", default=1, show_default=True,
              help="gunicorn worker processes (each loads its own CLIP).")
@click.option("--server", type=click.Choice(["gunicorn", "werkzeug"]), default="gunicorn", show_default=True)
def play_command(host, port, threads, workers, server):
    """Start the game on http://127.0.0.1:8000 with the embedded Redis."""
    from game.store import server as redis_server
    app = current_app._get_current_object()
    store = app.extensions["store"]
    # The factory already connected, starting the embedded server if none answered. Only a
    # server this process started is stopped on exit: another `play` or a worker may rely on it.
    started_redis = bool(app.extensions.get("redis_started_here"))
    puzzles = store.puzzles_for(store.today())
    judge = app.extensions["judge"]
    click.echo(f"Captionary: {len(puzzles)} puzzle(s) today ({store.today()}), judge {judge.model_id}"
               + (" - DEMO MODE, scores are not real" if judge.demo_mode else ""))
    if judge.demo_mode:
        click.secho(f"  {judge.demo_reason}", fg="yellow", err=True)
    if not puzzles:
        click.secho("  the target pool is empty: add photos with `flask --app game targets` first", fg="yellow")
    click.echo(f"Open http://{host}:{port}/  (Ctrl-C to stop)")
    try:
        if server == "werkzeug":
            app.run(host=host, port=port, threaded=True, use_reloader=False)
            return
        argv = gunicorn_argv(host, port, threads, workers)
        click.echo("$ " + " ".join(shlex.quote(a) for a in argv[2:]))
        proc = subprocess.Popen(argv)
        # `kill <pid>` must not leave gunicorn and the embedded Redis serving behind it: stop as Ctrl-C does.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            code = proc.wait()
        if code not in (0, -signal.SIGINT, 130):
            raise click.ClickException(f"gunicorn exited with status {code}")
    finally:
        if started_redis:
            redis_server.stop(app.instance_path)
            click.echo("stopped the embedded Redis")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def init_app(app) -> None:
    app.cli.add_command(play_command)
