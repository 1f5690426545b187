"""Puzzle days: UTC dates, puzzle ids, and the deterministic daily choice of targets.

Pure functions (no Redis): the Store freezes what `choose_targets` returns for a
day with SET NX, so every web process agrees even if the pool changes later.

A puzzle id is "YYYY-MM-DD/n" with n counted from 1 (it appears in URLs).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import random
import re
from typing import Mapping, Sequence

_PUZZLE_ID = re.compile(r"^(\d{4}-\d{2}-\d{2})/(\d{1,3})$")  # the one puzzle-id rule (web, store, CLI)


def parse_date(value) -> str:
    """A `date`, `datetime` or "YYYY-MM-DD" string -> the canonical "YYYY-MM-DD" (ValueError otherwise)."""
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.timezone.utc).date() if value.tzinfo else value.date()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise ValueError(f"not a date: {value!r} (expected YYYY-MM-DD)")


def utc_date(epoch_s: float) -> str:
    """The UTC puzzle day of a unix time."""
    return dt.datetime.fromtimestamp(epoch_s, tz=dt.timezone.utc).date().isoformat()


def epoch_day(date) -> int:
    """Days since 1970-01-01 (what a unix time divided by 86,400 rounds down to)."""
    return dt.date.fromisoformat(parse_date(date)).toordinal() - dt.date(1970, 1, 1).toordinal()


def add_days(date: str, days: int) -> str:
    return (dt.date.fromisoformat(parse_date(date)) + dt.timedelta(days=days)).isoformat()


def puzzle_id(date, index: int) -> str:
    return f"{parse_date(date)}/{int(index)}"


def parse_puzzle_id(value) -> tuple[str, int]:
    """"2026-11-27/2" -> ("2026-11-27", 2); ValueError with a readable message otherwise."""
    match = _PUZZLE_ID.match(value) if isinstance(value, str) else None
    if not match or int(match.group(2)) < 1:
        raise ValueError(f"not a puzzle id: {value!r} (expected YYYY-MM-DD/n)")
    return parse_date(match.group(1)), int(match.group(2))


def choose_targets(pool: Mapping[str, str], date, model_id: str, count: int,
                   recent: Sequence[str] = ()) -> list[str]:
    """Pick `count` target ids for `date` from `pool` (target id -> kind), deterministically.

    The same (pool, date, model id, recent) always gives the same list, in every
    process: the random generator is seeded by a hash of the model id and date,
    and every list is sorted before sampling. When both kinds exist the slots
    alternate GAN and photo (which one comes first is drawn too), so a day mixes
    them. Targets in `recent` (the last days' puzzles) are left out while enough
    others remain, so a small pool does not show the same image two days running.
    """
    date = parse_date(date)
    if count < 1:
        raise ValueError("a puzzle day needs at least one puzzle")
    fresh = {t: k for t, k in pool.items() if t not in set(recent)}
    candidates = fresh if len(fresh) >= count else dict(pool)
    seed = int.from_bytes(hashlib.sha256(f"{model_id}|{date}".encode()).digest()[:8], "big")
    rng = random.Random(seed)
    by_kind: dict[str, list[str]] = {}
    for target_id in sorted(candidates):
        by_kind.setdefault(candidates[target_id], []).append(target_id)
    for kind in sorted(by_kind):
        rng.shuffle(by_kind[kind])
    kinds = sorted(by_kind)
    rng.shuffle(kinds)
    chosen: list[str] = []
    slot = 0
    while len(chosen) < count and any(by_kind.values()):
        kind = kinds[slot % len(kinds)]
        slot += 1
        if by_kind[kind]:
            chosen.append(by_kind[kind].pop())
        else:  # this kind ran out: take from whichever still has targets
            other = next(k for k in kinds if by_kind[k])
            chosen.append(by_kind[other].pop())
    return chosen


def ordinal(date) -> int:
    """Day number of a date (a sortable score for the archive's sorted set)."""
    return dt.date.fromisoformat(parse_date(date)).toordinal()
