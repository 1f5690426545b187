"""The target pool and the puzzle days as the admin commands show and change them.

Plain functions for `flask targets show|remove|schedule` and `flask puzzles
show`: rows to print, and the checks an admin's input must pass first (a real
date, a known and ready target, no past day). Errors an admin can fix raise
`AdminError`; the commands in game/cli/__init__.py print them.
"""
from __future__ import annotations

import datetime as dt
import math
from typing import Any, Iterable, Optional

from game import puzzles as pz
from game.errors import AdminError


def parse_date(text: str) -> str:
    """A YYYY-MM-DD day as the store keys it."""
    try:
        return pz.parse_date(text)
    except ValueError:
        raise AdminError(f"{text!r} is not a date; use YYYY-MM-DD (UTC)") from None


def store_today(store: Any) -> str:
    """Today's puzzle day by the store's clock (UTC)."""
    return store.today()


def get_target_or_fail(store: Any, target_id: str):
    target = store.get_target(target_id)
    if target is None:
        raise AdminError(f"no target with id {target_id!r} (see `flask --app game targets list`)")
    return target


def describe_target(store: Any, target_id: str) -> list[tuple[str, str]]:
    """(label, value) rows for `targets show`."""
    t = get_target_or_fail(store, target_id)
    rows = [("id", t.id), ("kind", t.kind), ("status", f"{t.status} (for {store.model_id})"),
            ("created", dt.datetime.fromtimestamp(t.created, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))]
    if t.kind == "gan":
        rows += [("prompt", t.prompt or "-"), ("self-score", fmt_score(t.self_score)), ("seed", str(t.seed))]
    for label, value in (("title", t.title), ("attribution", t.attribution),
                         ("reference caption", t.reference_caption)):
        if value:
            rows.append((label, value))
    if t.hint_word:
        rows.append(("hint", f"{t.hint_word} ({fmt_score(t.hint_score)})"))
    for key, value in sorted((t.settings or {}).items()):
        rows.append((f"  {key}", str(value)))
    if t.history:
        points = ", ".join(f"{i}:{s:.3f}" for i, s in t.history[:12])
        rows.append(("score history", points + (" ..." if len(t.history) > 12 else "")))
    used = [d for d in store.days() if any(p.target_id == t.id for p in store.puzzles_for(d))]
    rows.append(("puzzle days", ", ".join(used) or "none yet"))
    rows.append(("image", f"{len(store.target_image(t.id))} bytes PNG, sha256 {t.sha256[:16]}"))
    return rows


def remove_target(store: Any, target_id: str) -> list[str]:
    """Take a target out of the pool; returns future days that will be chosen again."""
    get_target_or_fail(store, target_id)
    return store.remove_target(target_id)


def schedule(store: Any, date_text: str, target_ids: Iterable[str]) -> list:
    """Schedule targets as a day's puzzles; refuses past dates and unknown or unready targets."""
    day = parse_date(date_text)
    if day < store.today():
        raise AdminError(f"{day} is in the past (today is {store.today()} UTC); past days never change")
    ids = list(target_ids)
    for target_id in ids:
        target = get_target_or_fail(store, target_id)
        if target.status != "ready":
            raise AdminError(f"target {target_id} is {target.status}, not ready for {store.model_id}")
    try:
        return store.schedule(day, ids)
    except ValueError as exc:
        raise AdminError(str(exc)) from exc


def puzzle_rows(store: Any, day: str) -> list[list]:
    """Rows for `puzzles show`: puzzle id, target, kind, self-score, prompt or title, state."""
    rows = []
    for puzzle in store.preview_day(day):
        t = store.get_target(puzzle.target_id)
        label = (t.prompt if t and t.kind == "gan" else None) or puzzle.title or (t.title if t else None) or ""
        rows.append([puzzle.id, puzzle.target_id, puzzle.kind, fmt_score(t.self_score if t else None),
                     label, "frozen" if puzzle.frozen else "preview"])
    return rows


def fmt_score(value: Optional[float]) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
