"""A player's history from Redis, the days-played index's backfill, and one-time carry codes.

Reading a history never scans keys: the player's index `cap:m:{mid}:player:{pid}:days`
(a zset date -> epoch day, written by submit.lua in the same script as the submission)
lists the days played, and two pipelined round trips fetch each day's puzzles, the
player's bests and ranks, and each board's size. The cost grows with the days this
player played, not with the number of players or keys.

`reindex` backfills the index from data recorded before it existed: it walks the
frozen days (`cap:m:{mid}:days`) and each day's board, so it too never scans keys.
ZADD of a day already there changes nothing, so it is safe to repeat and to run
while people play.

Carry codes (`cap:carry:{code}`, a JSON string) let a player take their anonymous
identity to another device: created for a player, good for CARRY_TTL_S by the
store's clock, redeemed once by a Lua script that checks and marks it used in one
step. A used or expired code is kept for an hour more (Redis TTL), so a second try
is told "used" or "expired" rather than "unknown". The rules and the alphabet are
game/history.py's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

from game import history as rules
from game import players as players_mod
from game import puzzles as pz
from game.store import Q_SCALE, _decode_day

CARRY_KEEP_S = 3600  # how long a used or expired code still answers "used"/"expired"

# KEYS: 1 the code. ARGV: 1 now (store clock, seconds). Marks the code used and returns
# {"ok", player}, or {"unknown"} / {"used"} / {"expired"} and changes nothing.
_REDEEM = """
local raw = redis.call('GET', KEYS[1])
if not raw then return {'unknown'} end
local rec = cjson.decode(raw)
if rec.used then return {'used'} end
if tonumber(ARGV[1]) > tonumber(rec.expires) then return {'expired'} end
rec.used = tonumber(ARGV[1])
redis.call('SET', KEYS[1], cjson.encode(rec), 'KEEPTTL')
return {'ok', rec.player}
"""


@dataclass(frozen=True)
class PuzzleResult:
    """The player's best on one puzzle of a day they played (None fields: not played)."""

    index: int
    puzzle_id: str
    title: Optional[str]
    score: Optional[float]
    caption: Optional[str]  # the player's own best caption
    rank: Optional[int]
    players: int


@dataclass(frozen=True)
class DayResult:
    date: str
    epoch_day: int
    total: float  # the daily total: sum of the player's bests over the day's puzzles
    rank: int  # 1-based on the daily board
    players: int  # players on the day's board
    percentile: float  # game.history.percentile
    puzzles: list = field(default_factory=list)  # PuzzleResult, one per puzzle of the day


@dataclass(frozen=True)
class History:
    player_id: str
    today: str
    days: list  # DayResult, oldest first
    current_streak: int
    longest_streak: int
    best: Optional[tuple]  # (DayResult, PuzzleResult) of the best caption ever, or None

    @property
    def days_played(self) -> int:
        return len(self.days)


class HistoryStore:
    """History reads, the index backfill and carry codes over a Store (same Redis, same model)."""

    def __init__(self, store):
        self.store, self.r = store, store.r
        self._redeem = self.r.register_script(_REDEEM)

    # -- history ---------------------------------------------------------------------------------
    def played_days(self, player_id: str) -> list[tuple[str, int]]:
        """(date, epoch day) of every day with a ranked submission by this player, oldest first."""
        rows = self.r.zrange(self.store.days_played_key(player_id), 0, -1, withscores=True)
        return [(m.decode(), int(s)) for m, s in rows]

    def history(self, player_id: str) -> History:
        """Everything the history page shows, in two pipelined round trips after the index read."""
        if not players_mod.is_valid_player_id(player_id):
            raise ValueError("not a valid player id")
        s, m = self.store, self.store._m
        days = self.played_days(player_id)
        pipe = self.r.pipeline(transaction=False)
        for date, _ in days:
            pipe.get(f"{m}day:{date}")
            pipe.zrevrank(f"{m}day:{date}:board", player_id)
            pipe.zcard(f"{m}day:{date}:board")
            pipe.zscore(f"{m}day:{date}:board", player_id)
        first = pipe.execute()
        snaps = []
        for i, (date, _) in enumerate(days):
            raw = first[4 * i]
            snaps.append(json.loads(raw)["puzzles"] if raw else [])
        pipe = self.r.pipeline(transaction=False)
        for (date, _), snap in zip(days, snaps):
            for n in range(1, len(snap) + 1):
                board = f"{m}pz:{pz.puzzle_id(date, n)}:"
                pipe.hget(board + "best", player_id)
                pipe.zrevrank(board + "board", player_id)
                pipe.zcard(board + "board")
        second = iter(pipe.execute())
        results, best = [], None
        for i, ((date, eday), snap) in enumerate(zip(days, snaps)):
            rank0, players, composite = first[4 * i + 1], int(first[4 * i + 2]), first[4 * i + 3]
            puzzles = []
            for n, target in enumerate(snap, start=1):
                raw, prank0, count = next(second), next(second), int(next(second))
                rec = json.loads(raw) if raw is not None else None
                puzzles.append(PuzzleResult(
                    index=n, puzzle_id=pz.puzzle_id(date, n), title=target.get("title"),
                    score=float(rec["score"]) if rec else None, caption=rec["caption"] if rec else None,
                    rank=int(prank0) + 1 if prank0 is not None else None, players=count))
            if rank0 is None:  # indexed but off the board: a board removed by hand; nothing to show
                continue
            day = DayResult(date=date, epoch_day=eday, total=_decode_day(composite)[0] / Q_SCALE,
                            rank=int(rank0) + 1, players=players,
                            percentile=rules.percentile(int(rank0) + 1, players), puzzles=puzzles)
            results.append(day)
            for p in puzzles:
                if p.score is not None and (best is None or p.score > best[1].score):
                    best = (day, p)
        today = s.today()
        current, longest = rules.streaks([d.epoch_day for d in results], pz.epoch_day(today))
        return History(player_id=player_id, today=today, days=results, current_streak=current,
                       longest_streak=longest, best=best)

    def reindex(self) -> tuple[int, int]:
        """Backfill every player's days-played index from the daily boards: (days read, entries added)."""
        m = self.store._m
        added = 0
        dates = [d.decode() for d in self.r.zrange(m + "days", 0, -1)]
        for date in dates:
            eday = pz.epoch_day(date)
            cursor = 0
            while True:  # ZSCAN: a big day's board is read in pages, never in one huge reply
                cursor, rows = self.r.zscan(f"{m}day:{date}:board", cursor, count=1000)
                pipe = self.r.pipeline(transaction=False)
                for member, _ in rows:
                    pipe.zadd(self.store.days_played_key(member.decode()), {date: eday})
                added += sum(int(n) for n in pipe.execute())
                if cursor == 0:
                    break
        return len(dates), added

    # -- carry codes -----------------------------------------------------------------------------
    def create_carry_code(self, player_id: str) -> tuple[str, float]:
        """A fresh one-time code for this player and when it expires (unix seconds, store clock)."""
        if not players_mod.is_valid_player_id(player_id):
            raise ValueError("not a valid player id")
        now = self.store.now()
        expires = now + rules.CARRY_TTL_S
        record = json.dumps({"player": player_id, "created": now, "expires": expires})
        for _ in range(8):  # ~39 bits: a collision is next to impossible, but never overwrite one
            code = rules.new_carry_code()
            if self.r.set(f"cap:carry:{code}", record, nx=True, ex=rules.CARRY_TTL_S + CARRY_KEEP_S):
                return code, expires
        raise RuntimeError("could not find a free carry code")

    def redeem_carry_code(self, text) -> str:
        """The player id a code carries (and the code is used up), or CarryCodeError."""
        code = rules.normalize_carry_code(text)
        reply = self._redeem(keys=[f"cap:carry:{code}"], args=[repr(self.store.now())])
        status = reply[0].decode()
        shown = rules.format_carry_code(code)
        if status == "ok":
            return reply[1].decode()
        if status == "used":
            raise rules.CarryCodeError("used_code", f"the code {shown} was already used; codes work once. "
                                                    "Make a new one on your other device.")
        if status == "expired":
            raise rules.CarryCodeError("expired_code", f"the code {shown} has expired (codes last "
                                                       f"{rules.CARRY_TTL_S // 60} minutes). Make a new one "
                                                       "on your other device.")
        raise rules.CarryCodeError("unknown_code", f"there is no code {shown}: check it on your other device")
