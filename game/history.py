"""A player's history as numbers: streaks, percentiles and carry codes (pure functions, no Redis).

The store (game/store/history.py) reads a player's days and results; the page
(game/web/history.py) shows them. The rules live here, once:

  * a day counts as played when the player made at least one ranked submission on
    it (practice on past days does not count: it was not played on that day);
  * the longest streak is the longest run of consecutive UTC puzzle days played;
  * the current streak is the run that ends today, or, when today is not played
    yet, the run that ends yesterday: it stays current until today ends, because
    playing today still extends it. Otherwise it is 0;
  * the percentile of a daily rank r among n players is the share of the day's
    players you placed at or above, yourself included: 100 * (n - r + 1) / n.
    First of 10 is 100, last of 10 is 10, alone on a day is 100;
  * a carry code is 8 characters from an alphabet without look-alikes
    (no 0/O, 1/I/L, no U), shown as two groups of four ("K7QP-M2XR"); typing it in
    lower case, with spaces or with the dash is fine.
"""
from __future__ import annotations

import secrets
from typing import Iterable

CARRY_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"  # 30 symbols: 8 of them give ~39 bits
CARRY_LENGTH = 8
CARRY_TTL_S = 600  # a code is good for ten minutes, and once


class CarryCodeError(ValueError):
    """A carry code that cannot be used; `code` is machine-readable (bad_code, unknown_code,
    expired_code, used_code, slow_down), the message is for the player."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def streaks(epoch_days: Iterable[int], today: int) -> tuple[int, int]:
    """(current, longest) streaks of a set of played days (days since 1970-01-01, UTC)."""
    days = sorted(set(int(d) for d in epoch_days))
    longest = run = 0
    prev = None
    for d in days:
        run = run + 1 if prev is not None and d == prev + 1 else 1
        longest = max(longest, run)
        prev = d
    played = set(days)
    end = today if today in played else today - 1
    current = 0
    while end - current in played:
        current += 1
    return current, longest


def percentile(rank: int, players: int) -> float:
    """The share of a day's players ranked at or below `rank`, yourself included (see the docstring)."""
    if players < 1 or not 1 <= rank <= players:
        raise ValueError(f"rank {rank} is not among {players} players")
    return 100.0 * (players - rank + 1) / players


def new_carry_code() -> str:
    return "".join(secrets.choice(CARRY_ALPHABET) for _ in range(CARRY_LENGTH))


def format_carry_code(code: str) -> str:
    """"K7QPM2XR" -> "K7QP-M2XR" (easier to read out and type)."""
    half = CARRY_LENGTH // 2
    return f"{code[:half]}-{code[half:]}"


def normalize_carry_code(text) -> str:
    """The canonical code from what a player typed, or CarryCodeError bad_code saying what is wrong."""
    cleaned = "".join(str(text or "").split()).replace("-", "").upper()
    if not cleaned:
        raise CarryCodeError("bad_code", "type the code shown on your other device")
    if len(cleaned) != CARRY_LENGTH:
        raise CarryCodeError("bad_code", f"a code has {CARRY_LENGTH} letters and digits "
                                         f"(like K7QP-M2XR); this has {len(cleaned)}")
    wrong = sorted({c for c in cleaned if c not in CARRY_ALPHABET})
    if wrong:
        shown = " ".join(repr(c) for c in wrong[:4])
        raise CarryCodeError("bad_code", f"codes never contain {shown}: they use only "
                                         f"{CARRY_ALPHABET[:-8]} and the digits 2-9")
    return cleaned
