"""Admin commands: `flask --app game targets|models|puzzles|players|worker ...`.

Thin click commands over plain functions: the generation service
(game/generation/service.py), photos (game/photos.py), model weights
(game/judge.py), the pool and puzzle days (game/cli/pool.py) and backups
(game/store/backup.py); a command parses, calls, prints. Every error an admin
can fix is an `AdminError`, shown in red on stderr with exit code 1, after
which nothing has been half-done. `init_app(app)` registers the groups.
`python -m game.cli models ...` works without building the app (e.g. to
download weights before production starts).
"""
from __future__ import annotations

import functools
import os
import time
from typing import Optional

import click
from flask import current_app
from flask.cli import AppGroup

from game.cli.pool import (describe_target, fmt_score, get_target_or_fail, parse_date, puzzle_rows, remove_target,
                           schedule, store_today)
from game.config import GENERATION_DEFAULTS, generation_settings
from game.errors import AdminError
from game.generation.service import (check_model_names, generate_target, job_payload, load_models, model_choice,
                                     step_fields)
from game.judge import download_model, model_files, models_table


class CommandError(click.ClickException):
    """An admin-fixable error: red on stderr, exit code 1."""

    def show(self, file=None) -> None:
        click.secho(f"Error: {self.format_message()}", fg="red", err=True)


def admin_errors(fn):
    """Turn the errors an admin can fix into CommandError (and nothing else)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from engine.weights import WeightsUnavailableError, WeightsVerificationError
        try:
            return fn(*args, **kwargs)
        except (AdminError, WeightsUnavailableError, WeightsVerificationError) as exc:
            raise CommandError(str(exc)) from exc
    return wrapper


def _ext(name: str):
    return current_app.extensions[name]


def _settings() -> dict:
    return generation_settings(current_app.config)


def _queue():
    from game.generation.jobs import JobQueue
    cfg = _settings()
    return JobQueue(_ext("redis"), max_attempts=cfg["JOB_MAX_ATTEMPTS"], visibility_s=cfg["JOB_VISIBILITY_S"])


def _table(rows: list[list], headers: list[str]) -> None:
    cells = [headers] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
        click.secho(line, bold=index == 0)


def _or(value, default):
    return default if value is None else value


def _short(text: Optional[str], width: int = 48) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


# -- targets --------------------------------------------------------------

_D = GENERATION_DEFAULTS

targets = AppGroup("targets", help="Seed, add, list, schedule, export and import puzzle targets.")


def _progress_printer(iterations: int):
    """An on_step callback that drives a click progress bar; returns (callback, bar)."""
    state = {"done": 0, "fields": None}

    def show(_item):
        f = state["fields"]
        if not f:
            return ""
        score = "-" if f["score"] is None else f"{f['score']:.4f}"
        return f"it {f['iteration']}/{f['total'] or iterations}  score {score}  {f['it_s']:.1f} it/s"

    bar = click.progressbar(length=iterations, label="generating", item_show_func=show, show_eta=True,
                            show_percent=True)

    def on_step(info) -> None:
        fields = step_fields(info)
        state["fields"] = fields
        total = fields["total"] or iterations
        if bar.length != total:
            bar.length = total
        step = max(0, fields["iteration"] - state["done"])
        state["done"] = max(state["done"], fields["iteration"])
        bar.update(step, fields)

    return on_step, bar


@targets.command("seed")
@click.argument("prompt")
@click.option("--size", type=int, default=None,
              help=f"Image side in pixels, a multiple of 16 [CAPTIONARY_GEN_SIZE, {_D['GEN_SIZE']}].")
@click.option("--iterations", type=int, default=None,
              help=f"Optimisation steps [CAPTIONARY_GEN_ITERATIONS, {_D['GEN_ITERATIONS']}].")
@click.option("--seeds", type=int, default=None,
              help=f"Best-of-N: seeds started together [CAPTIONARY_GEN_SEEDS, {_D['GEN_SEEDS']}].")
@click.option("--keep", type=int, default=None,
              help=f"Seeds kept after the checkpoint step [CAPTIONARY_GEN_KEEP, {_D['GEN_KEEP']}].")
@click.option("--seed", type=int, default=None, help="Random seed (same seed + settings -> same image).")
@click.option("--init-image", type=click.Path(dir_okay=False), default=None, help="Start from this image.")
@click.option("--cutn", type=int, default=None, help=f"Cutouts per step [CAPTIONARY_GEN_CUTN, {_D['GEN_CUTN']}].")
@click.option("--clip-model", default=None, help="CLIP architecture [CAPTIONARY_CLIP_MODEL], e.g. test-tiny.")
@click.option("--clip-pretrained", default=None, help="CLIP weights tag or file [CAPTIONARY_CLIP_PRETRAINED].")
@click.option("--vqgan-model", default=None, help="VQGAN model [CAPTIONARY_VQGAN_MODEL], e.g. test-tiny.")
@click.option("--min-score", type=float, default=None, help="Do not add the target below this self-score.")
@click.option("--queue", "to_queue", is_flag=True, help="Enqueue a job for the workers instead of generating here.")
@admin_errors
def targets_seed(prompt, size, iterations, seeds, keep, seed, init_image, cutn, clip_model, clip_pretrained,
                 vqgan_model, min_score, to_queue):
    """Generate a GAN target from PROMPT.

    Generates here with a progress bar and adds the image to the pool with its
    self-score (or, with --queue, leaves the job to the workers).
    """
    cfg = _settings()
    payload = job_payload(
        prompt, size=_or(size, cfg["GEN_SIZE"]), iterations=_or(iterations, cfg["GEN_ITERATIONS"]),
        seeds=_or(seeds, cfg["GEN_SEEDS"]), keep=_or(keep, cfg["GEN_KEEP"]), seed=seed, init_image=init_image,
        cutn=cutn, clip_model=clip_model, clip_pretrained=clip_pretrained, vqgan_model=vqgan_model,
        min_score=min_score)
    choice = model_choice(current_app.config, clip_model, clip_pretrained, vqgan_model)
    if to_queue:
        check_model_names(choice)
        job_id = _queue().enqueue(payload)
        click.echo(f"queued job {job_id}: {payload['prompt']!r} (see `flask --app game targets jobs`)")
        return
    scorer = _ext("scorer")
    clip, vqgan = load_models(choice, judge_clip=getattr(scorer, "clip", None))
    for kind, model in (("CLIP", clip), ("VQGAN", vqgan)):
        if not getattr(model, "is_pretrained", True):
            click.secho(f"note: {kind} {model.model_id} has random weights; the image and its score are not real",
                        fg="yellow", err=True)
    on_step, bar = _progress_printer(payload["iterations"])
    with bar:
        seeded = generate_target(_ext("store"), scorer, clip, vqgan, payload, cfg, on_step=on_step,
                                       min_score=min_score)
    if seeded.target_id is None:
        raise CommandError(f"self-score {seeded.self_score:.4f} is below --min-score {min_score}; nothing added")
    click.echo(f"added target {seeded.target_id}  self-score {seeded.self_score:.4f}  seed {seeded.seed}  "
               f"({seeded.elapsed_s:.1f}s)")


@targets.command("add-photo")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--caption", default=None, help="A reference caption for the photo(s).")
@click.option("--title", default=None, help="A title shown with the photo.")
@click.option("--attribution", default=None, help="Author and licence, shown with the photo.")
@admin_errors
def targets_add_photo(paths, caption, title, attribution):
    """Add photos to the pool (all or none).

    Each file is validated (format, pixel count, file size, decompression
    bombs) and normalised before any is added.
    """
    from game.photos import add_photos  # PIL and numpy: only for this command
    added = add_photos(_ext("store"), _ext("scorer"), list(paths), caption=caption, title=title,
                             attribution=attribution)
    for path, target_id in zip(paths, added):
        click.echo(f"added photo {target_id}  {path}")


@targets.command("list")
@click.option("--kind", type=click.Choice(["gan", "photo"]), default=None, help="Only this kind.")
@click.option("--status", type=click.Choice(["ready", "pending", "removed"]), default=None,
              help="Only this status (pending: no embedding for the current CLIP yet).")
@click.option("--min-score", type=float, default=None, help="Only targets with a self-score at least this.")
@admin_errors
def targets_list(kind, status, min_score):
    """List the pool as a table."""
    items = _ext("store").list_targets(kind=kind, status=status, min_score=min_score)
    if not items:
        click.echo("no targets match")
        return
    rows = [[t.id, t.kind, getattr(t, "status", ""), fmt_score(getattr(t, "self_score", None)),
             getattr(t, "seed", None) if getattr(t, "seed", None) is not None else "-",
             _short(getattr(t, "prompt", None) or getattr(t, "title", None) or getattr(t, "reference_caption", None))]
            for t in items]
    _table(rows, ["ID", "KIND", "STATUS", "SCORE", "SEED", "PROMPT / TITLE"])
    click.echo(f"{len(rows)} target(s), judged by {_ext('store').model_id}")


@targets.command("show")
@click.argument("target_id")
@admin_errors
def targets_show(target_id):
    """Show one target's details."""
    for key, value in describe_target(_ext("store"), target_id):
        click.echo(f"{key + ':':<18} {value}")


@targets.command("remove")
@click.argument("target_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@admin_errors
def targets_remove(target_id, yes):
    """Remove a target from the pool.

    Past days keep their puzzles, boards and reveals; future days that used
    the target are chosen again.
    """
    store = _ext("store")
    target = get_target_or_fail(store, target_id)
    label = getattr(target, "prompt", None) or getattr(target, "title", None) or target.kind
    if not yes and not click.confirm(f"remove target {target_id} ({label})?"):
        raise CommandError("not removed")
    cleared = remove_target(store, target_id)
    click.echo(f"removed target {target_id}")
    if cleared:
        click.echo(f"future days that used it will be chosen again: {', '.join(cleared)}")


@targets.command("schedule")
@click.argument("date")
@click.argument("target_ids", nargs=-1, required=True)
@admin_errors
def targets_schedule(date, target_ids):
    """Set the puzzles of DATE (YYYY-MM-DD, today or later)."""
    puzzles = schedule(_ext("store"), date, target_ids)
    for puzzle in puzzles:
        click.echo(f"{puzzle.id}  target {puzzle.target_id}")


@targets.command("jobs")
@click.option("--status", type=click.Choice(["queued", "running", "done", "rejected", "failed"]), default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@admin_errors
def targets_jobs(status, limit):
    """List generation jobs and their errors."""
    jobs = _queue().list_jobs(status=status, limit=limit)
    if not jobs:
        click.echo("no jobs")
        return
    from game.generation.heartbeats import live_workers
    alive = {w["name"] for w in live_workers(_ext("redis"))}
    now = time.time()
    rows = []
    for job in jobs:
        detail = job.target_id and f"target {job.target_id}" or job.error or ""
        state = job.status
        if state == "running":
            # A dead worker's job reads "running" until another worker takes it over.
            state = f"running {job.progress or ''}".strip() if job.worker in alive else "running (worker gone)"
        rows.append([job.id, state, job.attempts, f"{int(now - job.created_at)}s ago", job.worker or "-",
                     _short(job.payload.get("prompt"), 36), _short(detail, 60)])
    _table(rows, ["JOB", "STATUS", "TRIES", "CREATED", "WORKER", "PROMPT", "RESULT / ERROR"])
    for job in jobs:  # failures in full: the error is what an admin needs to act on
        if job.status == "failed":
            click.secho(f"{job.id} failed: {job.error}", fg="red")


@targets.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
@admin_errors
def targets_export(directory):
    """Back up targets and boards to DIRECTORY.

    Writes targets, images, embeddings, puzzle days, players, submissions and
    boards as files (manifest.json, keys.jsonl, images/*.png).
    """
    from game.store import backup
    summary = backup.export_all(_ext("redis"), directory)
    click.echo(f"exported {summary} to {directory}")


@targets.command("import")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--replace", is_flag=True, help="Delete the game data already in this Redis first (asks).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation with --replace.")
@admin_errors
def targets_import(directory, replace, yes):
    """Restore a backup into an empty Redis.

    Every record is checked before anything is written; then the keys are
    staged and swapped in by one script: everything or nothing.
    """
    from game.store import backup
    if replace and not yes and not click.confirm("delete all game data in this Redis and import the backup?"):
        raise CommandError("nothing imported")
    summary = backup.import_all(_ext("redis"), directory, replace=replace)
    click.echo(f"imported {summary} from {directory}")


# -- puzzles --------------------------------------------------------------

puzzles = AppGroup("puzzles", help="Preview the puzzles of a day.")


@puzzles.command("show")
@click.argument("date", required=False)
@admin_errors
def puzzles_show(date):
    """Show the puzzles of DATE (YYYY-MM-DD; default today, UTC)."""
    store = _ext("store")
    day = parse_date(date) if date else store_today(store)
    rows = puzzle_rows(store, day)
    click.echo(f"puzzles for {day} (judged by {store.model_id})")
    if not rows:
        click.echo("no puzzles: the pool has no ready targets")
        return
    _table(rows, ["PUZZLE", "TARGET", "KIND", "SCORE", "PROMPT / TITLE", "STATE"])


# -- players --------------------------------------------------------------

players = AppGroup("players", help="Player housekeeping.")


@players.command("register-names")
@admin_errors
def players_register_names():
    """Claim the nicknames saved before names were unique (run once after upgrading; safe to repeat)."""
    # Without this, an old name is only claimed when its player saves it again,
    # and until then a new player could take a look-alike of it.
    count = _ext("store").register_nicknames()
    click.echo(f"registered {count} nickname{'' if count == 1 else 's'}")


@players.command("reindex")
@admin_errors
def players_reindex():
    """Backfill each player's days-played index from the daily boards (after upgrading; safe to repeat)."""
    from game.store.history import HistoryStore
    days, added = HistoryStore(_ext("store")).reindex()
    click.echo(f"read {days} day{'' if days == 1 else 's'}; added {added} day{'' if added == 1 else 's'} "
               "to players' histories")


# -- models ---------------------------------------------------------------

def _models_dir() -> Optional[str]:
    return current_app.config.get("MODELS_DIR")


models = AppGroup("models", help="List, download and check model weights.")


@models.command("list")
@admin_errors
def models_list():
    """List the known models and which are here."""
    rows = [[r["name"], r["kind"], f"{r['size_mb']} MB" if r["size_mb"] else "?", "yes" if r["present"] else "no",
             _short(r["description"], 60)] for r in models_table(_models_dir())]
    _table(rows, ["NAME", "KIND", "SIZE", "PRESENT", "DESCRIPTION"])
    click.echo("test-tiny (CLIP and VQGAN) needs no download: random weights for tests and offline demos")


@models.command("download")
@click.argument("name")
@click.option("--force", is_flag=True, help="Fetch every file again, replacing files already there once verified.")
@admin_errors
def models_download(name, force):
    """Download and verify the weights of NAME."""
    state = {"bar": None, "done": 0}

    def progress(done: int, total: Optional[int]) -> None:
        if state["bar"] is None:
            state["bar"] = click.progressbar(length=total or 0, label=f"downloading {name}", show_eta=bool(total))
            state["bar"].__enter__()
        state["bar"].update(done - state["done"])
        state["done"] = done

    try:
        paths = download_model(name, _models_dir(), progress, force=force)
    finally:
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)
    for path in paths:
        click.echo(f"ok  {path}")


@models.command("check")
@admin_errors
def models_check():
    """Show which weight files are here and where."""
    rows = model_files(_models_dir())
    _table([[r["name"], r["file"], "present" if r["present"] else "MISSING", r["path"]] for r in rows],
           ["NAME", "FILE", "STATE", "EXPECTED AT"])
    missing = [r for r in rows if not r["present"]]
    if missing:
        click.echo(f"{len(missing)} file(s) missing: `flask --app game models download NAME` fetches them, "
                   "or copy them to the paths above")


# -- worker ---------------------------------------------------------------

worker = AppGroup("worker", help="Run the background generator worker.")


@worker.command("run")
@click.option("--name", default=None, help="Consumer name (default host:pid:random).")
@click.option("--once", is_flag=True, help="Process what is queued, top the pool up once, then exit.")
@admin_errors
def worker_run(name, once):
    """Consume generation jobs and keep the pool topped up."""
    from game.generation.worker import Worker
    Worker.from_app(current_app, name=name).run(once=once)


def init_app(app) -> None:
    """Register the command groups on `app`."""
    for group in (targets, models, puzzles, players, worker):
        app.cli.add_command(group)


def _bare_app():
    """The app for `python -m game.cli`: only the environment's settings, no Redis, no CLIP."""
    from flask import Flask
    app = Flask("captionary-models")
    app.config["MODELS_DIR"] = os.environ.get("CAPTIONARY_MODELS_DIR")
    return app


def standalone(argv=None) -> None:
    """`python -m game.cli models ...`: the models group without building the game app
    (e.g. to download weights before a production app, which refuses to start without them)."""
    from flask.cli import ScriptInfo
    from game.cli.embedded import redis_group
    click.Group("python -m game.cli", commands={"models": models, "redis": redis_group})(
        args=argv, obj=ScriptInfo(create_app=_bare_app))
