"""The Redis data layer: targets, puzzle days, players, submissions, boards, rate limits, pub/sub.

All shared state lives in Redis; a `Store` holds only its client, the CLIP
model id and the game rules, so any number of web processes, workers and CLI
commands can each build one. Every key starts with `cap:`; everything that
depends on the CLIP model lives under `cap:m:{model_id}:`, so demo boards
(`test-tiny/random`) never mix with real ones and a model switch starts fresh
boards while the images stay shared.

Key layout (strings in `{}` are ids; "q" is a score in integer micro-units):
  cap:target:{tid}              hash   kind, status, created, prompt, seed, settings, title, ...
  cap:target:{tid}:image        string the normalised PNG
  cap:targets                   zset   tid -> created time (all targets, removed ones too)
  cap:targets:sha               hash   sha256 of the PNG -> tid (imports are idempotent)
  cap:models                    set    model ids that have stored anything
  cap:player:{pid}              hash   created, nickname, nickname_key (its skeleton)
  cap:nicknames                 hash   nickname skeleton -> pid (who holds a name; one holder each)
  cap:rl:{key}                  hash   token bucket (tokens, ts)
  cap:m:{mid}:emb:{tid}         hash   embedding (float32 LE bytes), dim, self_score, hint_word, hint_score
  cap:m:{mid}:ready             set    tids in this model's pool (embedded, not removed)
  cap:m:{mid}:days              zset   frozen puzzle days (date -> ordinal)
  cap:m:{mid}:day:{date}        string JSON snapshots of the day's puzzles, frozen with SET NX
  cap:m:{mid}:day:{date}:seq    int    the day's submission counter (tie-break order)
  cap:m:{mid}:day:{date}:log    stream append-only log of every ranked submission
  cap:m:{mid}:day:{date}:tot    hash   pid -> sum of best q over the day's puzzles
  cap:m:{mid}:day:{date}:board  zset   pid -> composite(total, seq)  (daily leaderboard)
  cap:m:{mid}:pz:{puzzle}:board zset   pid -> composite(best q, seq) (puzzle leaderboard)
  cap:m:{mid}:pz:{puzzle}:best  hash   pid -> JSON {q, score, caption, seq, ms}
  cap:m:{mid}:pz:{puzzle}:count hash   pid -> ranked submissions made
  cap:m:{mid}:pz:{puzzle}:att:{pid}      list JSON attempts, oldest first
  cap:m:{mid}:player:{pid}:days zset   date -> epoch day: days with a ranked submission (history page)
  cap:m:{mid}:practice:{puzzle}:best     hash / ...:att:{pid} list: past-day practice, never ranked
  cap:m:{mid}:vocab             hash   hint vocabulary embeddings (words sha, dim, matrix)
  channel cap:m:{mid}:live:{puzzle}     pub/sub: leaderboard changes
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import redis

from game import players as players_mod
from game import puzzles as pz
from game.store.targets import TargetsMixin, Target, Puzzle  # noqa: F401  (re-exported)

_LUA_DIR = Path(__file__).with_name("lua")
Q_SCALE = 1_000_000  # scores are ranked in micro-units: differences below 1e-6 are ties
PUZZLE_SHIFT = 2 ** 32  # composite puzzle score: q * 2^32 + (2^32 - 1 - seq)
DAY_SHIFT = 2 ** 29  # composite daily score: total * 2^29 + (2^29 - 1 - seq)
MAX_PUZZLES_PER_DAY = 16  # keeps |total| * 2^29 below 2^53 (exact in a double)
PRACTICE_ATTEMPTS_KEPT = 50


class NicknameTaken(ValueError):
    """Another player holds a nickname that looks the same; `code` as SubmissionError's."""

    code = "nickname_taken"


class SubmissionError(ValueError):
    """A submission that cannot be recorded; `code` is machine-readable, the message readable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SubmitResult:
    score: float  # this submission's score
    best: float  # the player's best on this puzzle (ranked, or practice best in practice mode)
    rank: int  # 1-based rank on the puzzle board (practice: where the score would place on the final board)
    submissions_left: Optional[int]  # None in practice mode (not capped)
    improved: bool  # this submission raised the player's best
    practice: bool = False
    attempt: int = 0  # how many submissions this player has made on this puzzle (this one included)


@dataclass(frozen=True)
class Attempt:
    caption: str
    score: float
    ms: int  # unix time in milliseconds
    seq: int  # order among the day's submissions (0 for practice)


@dataclass(frozen=True)
class BoardEntry:
    rank: int
    player_id: str
    nickname: str  # the player's nickname, or a stable default like "player-3fa2c1"
    score: float
    caption: Optional[str]  # None unless the day is over and captions were asked for


@dataclass(frozen=True)
class Reveal:
    puzzle: Puzzle
    kind: str
    title: Optional[str]
    prompt: Optional[str]  # the machine's secret prompt (GAN targets)
    self_score: Optional[float]  # the machine's score with its own prompt
    reference_caption: Optional[str]
    attribution: Optional[str]
    top: list  # BoardEntry with captions
    players: int  # players with a ranked submission
    beat_machine: Optional[int]  # players whose best is above self_score (None without one)
    best_scores: list  # every player's best score, highest first (for the histogram)


def _q(score: float) -> int:
    return int(round(score * Q_SCALE))


def _decode_puzzle(composite) -> tuple[int, int]:
    c = int(float(composite))
    return c // PUZZLE_SHIFT, PUZZLE_SHIFT - 1 - c % PUZZLE_SHIFT


def _decode_day(composite) -> tuple[int, int]:
    c = int(float(composite))
    return c // DAY_SHIFT, DAY_SHIFT - 1 - c % DAY_SHIFT


class RedisClock:
    """Unix time by the Redis server's clock: one clock for every web process, worker and CLI.

    Each process's own clock may drift or sit in another time zone's idea of midnight; the
    puzzle day must not depend on which process answered. TIME is read once per
    `refresh_s` and carried forward on this process's monotonic clock, so the hot path
    (every draft asks for today) costs no round trip.
    """

    def __init__(self, client: redis.Redis, refresh_s: float = 30.0):
        self.r, self.refresh_s = client, float(refresh_s)
        self._offset: Optional[float] = None
        self._next = 0.0

    def __call__(self) -> float:
        mono = time.monotonic()
        if self._offset is None or mono >= self._next:
            seconds, micros = self.r.time()
            self._offset = seconds + micros / 1e6 - time.monotonic()
            self._next = mono + self.refresh_s
        return mono + self._offset


class Store(TargetsMixin):
    """All Captionary state for one CLIP model, in Redis. Cheap to construct; thread-safe."""

    @classmethod
    def from_config(cls, redis_client: redis.Redis, model_id: str, config: dict) -> "Store":
        """The store with a finished config's limits (the app factory's and the worker's)."""
        # CLOCK (tests only): a callable returning unix seconds, so tests can pin the puzzle day.
        return cls(redis_client, model_id, puzzles_per_day=config["PUZZLES_PER_DAY"],
                   max_submissions=config["MAX_SUBMISSIONS"], max_caption_chars=config["MAX_CAPTION_CHARS"],
                   clock=config.get("CLOCK"))

    def __init__(self, redis_client: redis.Redis, model_id: str, *, puzzles_per_day: int = 3,
                 max_submissions: int = 10, max_caption_chars: int = 200,
                 clock: Optional[Callable[[], float]] = None):
        if not model_id or not isinstance(model_id, str):
            raise ValueError("the store needs the CLIP model id that keys its embeddings and boards")
        if not 1 <= int(puzzles_per_day) <= MAX_PUZZLES_PER_DAY:
            raise ValueError(f"puzzles per day must be between 1 and {MAX_PUZZLES_PER_DAY}")
        if int(max_submissions) < 1:
            raise ValueError("max submissions per puzzle must be at least 1")
        self.r = redis_client
        self.model_id = model_id
        self.puzzles_per_day = int(puzzles_per_day)
        self.max_submissions = int(max_submissions)
        self.max_caption_chars = int(max_caption_chars)
        # Tests pin the day with their own clock; everything else shares the Redis server's.
        self.clock = clock or RedisClock(redis_client)
        self._m = f"cap:m:{model_id}:"
        attempts = (_LUA_DIR / "_attempts.lua").read_text()  # the helpers both recording scripts share
        self._submit = self.r.register_script(attempts + (_LUA_DIR / "submit.lua").read_text())
        self._practice = self.r.register_script(attempts + (_LUA_DIR / "practice.lua").read_text())
        self._bucket = self.r.register_script((_LUA_DIR / "take_token.lua").read_text())
        self._claim_name = self.r.register_script((_LUA_DIR / "claim_nickname.lua").read_text())
        self.r.sadd("cap:models", model_id)

    # ----- time -----
    def now(self) -> float:
        return float(self.clock())

    def today(self) -> str:
        """Today's puzzle day (UTC) by this store's clock."""
        return pz.utc_date(self.now())

    def day_state(self, date) -> str:
        """"past", "today" or "future" for a puzzle day."""
        date, today = pz.parse_date(date), self.today()
        return "today" if date == today else ("past" if date < today else "future")

    # ----- players -----
    def ensure_player(self, player_id: str) -> None:
        if not players_mod.is_valid_player_id(player_id):
            raise ValueError("not a valid player id")
        self.r.hsetnx(f"cap:player:{player_id}", "created", f"{self.now():.3f}")

    def set_nickname(self, player_id: str, nickname: str) -> str:
        """Validate (length, characters, profanity, look-alikes) and store; returns the cleaned nickname.

        Raises ValueError for a name that breaks the rules and NicknameTaken (a
        ValueError) when another player holds one that looks the same; either
        way the player's current nickname is kept.
        """
        cleaned = players_mod.validate_nickname(nickname)
        if not players_mod.is_valid_player_id(player_id):
            raise ValueError("not a valid player id")
        key = players_mod.nickname_key(cleaned)
        saved = self._claim_name(keys=["cap:nicknames", f"cap:player:{player_id}"],
                                 args=[player_id, key, cleaned, f"{self.now():.3f}"])
        if not saved:
            raise NicknameTaken(f"the nickname {cleaned} is taken, or looks the same as one that is; "
                                "please choose another")
        return cleaned

    def nickname_holder(self, nickname: str) -> Optional[str]:
        """The player id holding `nickname` or a look-alike of it, if any."""
        value = self.r.hget("cap:nicknames", players_mod.nickname_key(nickname))
        return value.decode() if value is not None else None

    def register_nicknames(self) -> int:
        """Claim the skeletons of nicknames saved before names were unique; returns how many.

        Oldest players first, so where two old names look the same the earlier
        one keeps the claim (the later still shows, but cannot be re-saved as is).
        Safe to run again and while players play (each claim is a WATCH/MULTI transaction).
        """
        players = []
        for raw in self.r.scan_iter(match="cap:player:*", count=500):
            pid = raw.decode()[len("cap:player:"):]
            created, name, key = self.r.hmget(raw, "created", "nickname", "nickname_key")
            if name is not None and key is None:
                players.append((float(created or 0), pid, name.decode()))
        claimed = 0
        for _, pid, name in sorted(players):
            claimed += self._register_nickname(pid, name)
        return claimed

    def _register_nickname(self, player_id: str, name: str) -> int:
        # WATCH both hashes: a player renaming (claim_nickname.lua) or anyone
        # claiming a name meanwhile makes EXEC fail, and we look again.
        key, pkey = players_mod.nickname_key(name), f"cap:player:{player_id}"
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(pkey, "cap:nicknames")
                    current, has_key = pipe.hget(pkey, "nickname"), pipe.hexists(pkey, "nickname_key")
                    holder = pipe.hget("cap:nicknames", key)
                    if current is None or current.decode() != name or has_key or holder not in (None, player_id.encode()):
                        pipe.unwatch()
                        return 0
                    pipe.multi()
                    pipe.hset("cap:nicknames", key, player_id)
                    pipe.hset(pkey, "nickname_key", key)
                    pipe.execute()
                    return 1
                except redis.WatchError:
                    continue

    # -- hints: who asked for a puzzle's hint (shown next to their score) -----------------------
    def _hint_key(self, puzzle_id: str) -> str:
        # Per model, like the boards: demo and real games keep separate hint records.
        return f"{self._m}pz:{puzzle_id}:hints"

    def mark_hint_used(self, player_id: str, puzzle_id: str) -> None:
        """Remember the first time a player asked for this puzzle's hint (unix ms)."""
        self.r.hsetnx(self._hint_key(puzzle_id), player_id, int(self.now() * 1000))

    def hint_used(self, player_id: str, puzzle_id: str) -> bool:
        return bool(self.r.hexists(self._hint_key(puzzle_id), player_id))

    def hint_users(self, puzzle_id: str, player_ids: list[str]) -> list[bool]:
        """For each player id, whether they used the hint (one round trip, for a board)."""
        if not player_ids:
            return []
        return [mark is not None for mark in self.r.hmget(self._hint_key(puzzle_id), player_ids)]

    def nickname(self, player_id: str) -> Optional[str]:
        value = self.r.hget(f"cap:player:{player_id}", "nickname")
        return value.decode() if value is not None else None

    def display_name(self, player_id: str) -> str:
        return self.nickname(player_id) or players_mod.default_nickname(player_id)

    def _display_names(self, player_ids: list[str]) -> list[str]:
        pipe = self.r.pipeline(transaction=False)
        for pid in player_ids:
            pipe.hget(f"cap:player:{pid}", "nickname")
        return [v.decode() if v is not None else players_mod.default_nickname(pid)
                for pid, v in zip(player_ids, pipe.execute())]

    # ----- submissions -----
    def _pz(self, puzzle_id: str) -> str:
        return f"{self._m}pz:{puzzle_id}:"

    def _day(self, date: str) -> str:
        return f"{self._m}day:{date}"

    def _check_submission(self, player_id, puzzle_id, caption, score) -> tuple[Puzzle, str, float]:
        if not players_mod.is_valid_player_id(player_id):
            raise SubmissionError("bad_player", "not a valid player id")
        if not isinstance(caption, str) or not caption.strip():
            raise SubmissionError("bad_caption", "the caption is empty")
        try:
            caption.encode("utf-8")
        except UnicodeEncodeError:
            raise SubmissionError("bad_caption", "the caption contains characters that are not valid text") from None
        if len(caption) > self.max_caption_chars:
            raise SubmissionError("bad_caption", f"the caption is longer than {self.max_caption_chars} characters")
        try:
            score = float(score)
        except (TypeError, ValueError):
            raise SubmissionError("bad_score", "the score must be a number") from None
        if not math.isfinite(score) or abs(score) > 1.0001:
            raise SubmissionError("bad_score", f"a cosine score lies in [-1, 1], got {score!r}")
        score = max(-1.0, min(1.0, score))
        try:
            puzzle = self.get_puzzle(puzzle_id)
        except ValueError:
            puzzle = None
        if puzzle is None:
            raise SubmissionError("unknown_puzzle", f"there is no puzzle {puzzle_id!r}")
        return puzzle, caption, score

    def submit(self, player_id: str, puzzle_id: str, caption: str, score: float, *,
               practice: bool = False) -> SubmitResult:
        """Record a submission atomically; ranked today, practice-only on past days.

        Raises SubmissionError (a ValueError) with code cap_reached, day_over
        (a past day without practice=True), not_started (a future day),
        unknown_puzzle, bad_caption, bad_score or bad_player.
        """
        puzzle, caption, score = self._check_submission(player_id, puzzle_id, caption, score)
        state = self.day_state(puzzle.date)
        if state == "future":
            raise SubmissionError("not_started", f"puzzle {puzzle.id} opens on {puzzle.date} (UTC)")
        self.ensure_player(player_id)
        now_ms = int(self.now() * 1000)
        if practice or state == "past":
            if not practice:
                raise SubmissionError("day_over", f"the day {puzzle.date} is over; past puzzles are practice only")
            return self._submit_practice(player_id, puzzle, caption, score, now_ms)
        self.freeze_day(puzzle.date)  # a day with submissions never changes its puzzles
        p, d = self._pz(puzzle.id), self._day(puzzle.date)
        keys = [p + "count", p + "best", p + "board", d + ":seq", d + ":tot", d + ":board", d + ":log",
                f"{p}att:{player_id}", self.days_played_key(player_id)]
        pinned_today = "" if isinstance(self.clock, RedisClock) else str(int(self.now() // 86400))
        reply = self._submit(keys=keys, args=[player_id, _q(score), repr(score), caption, now_ms,
                                              self.max_submissions, puzzle.id, pz.epoch_day(puzzle.date),
                                              pinned_today, puzzle.date])
        if reply[0] == b"day":
            raise SubmissionError("day_over", f"puzzle {puzzle.id} is not today's: submissions are taken "
                                              f"only on {puzzle.date} (UTC)")
        if reply[0] == b"cap":
            raise SubmissionError("cap_reached", f"no submissions left on this puzzle "
                                                 f"(the limit is {self.max_submissions} per day)")
        _, count, _seq, improved, best_text, rank0 = reply
        return SubmitResult(score=score, best=float(best_text), rank=int(rank0) + 1,
                            submissions_left=self.max_submissions - int(count), improved=bool(improved),
                            practice=False, attempt=int(count))

    def _submit_practice(self, player_id, puzzle, caption, score, now_ms) -> SubmitResult:
        base = f"{self._m}practice:{puzzle.id}:"
        improved, best_text, count = self._practice(
            keys=[base + "best", f"{base}att:{player_id}"],
            args=[player_id, _q(score), repr(score), caption, now_ms, PRACTICE_ATTEMPTS_KEPT])
        # Where this score would sit on the final board: everyone at or above it ranks
        # first (ties go to the earlier submission, and theirs were earlier).
        above = self.r.zcount(self._pz(puzzle.id) + "board", _q(score) * PUZZLE_SHIFT, "+inf")
        return SubmitResult(score=score, best=float(best_text), rank=int(above) + 1, submissions_left=None,
                            improved=bool(improved), practice=True, attempt=int(count))

    def days_played_key(self, player_id: str) -> str:
        """The player's index of days played (written by submit.lua; read by game/store/history.py)."""
        return f"{self._m}player:{player_id}:days"

    def attempts(self, player_id: str, puzzle_id: str, *, practice: bool = False) -> list[Attempt]:
        """The player's submissions on a puzzle, oldest first (their own captions: always visible to them)."""
        key = (f"{self._m}practice:{puzzle_id}:att:{player_id}" if practice
               else f"{self._pz(puzzle_id)}att:{player_id}")
        rows = [json.loads(raw) for raw in self.r.lrange(key, 0, -1)]
        return [Attempt(caption=r["caption"], score=float(r["score"]), ms=int(r["ms"]), seq=int(r["seq"]))
                for r in rows]

    def submissions_left(self, player_id: str, puzzle_id: str) -> int:
        used = self.r.hget(self._pz(puzzle_id) + "count", player_id)
        return self.max_submissions - int(used or 0)

    def best(self, player_id: str, puzzle_id: str, *, practice: bool = False) -> Optional[float]:
        key = f"{self._m}practice:{puzzle_id}:best" if practice else self._pz(puzzle_id) + "best"
        raw = self.r.hget(key, player_id)
        return float(json.loads(raw)["score"]) if raw is not None else None

    def rank(self, player_id: str, puzzle_id: str) -> Optional[int]:
        rank0 = self.r.zrevrank(self._pz(puzzle_id) + "board", player_id)
        return None if rank0 is None else int(rank0) + 1

    def board_size(self, puzzle_id: str) -> int:
        return int(self.r.zcard(self._pz(puzzle_id) + "board"))

    def leaderboard(self, puzzle_id: str, limit: int = 20, with_captions: bool = False) -> list[BoardEntry]:
        """Top `limit` of a puzzle. Captions only once the puzzle's day is over (hidden while it runs)."""
        date, _ = pz.parse_puzzle_id(puzzle_id)
        show = with_captions and self.day_state(date) == "past"
        if int(limit) <= 0:
            return []
        rows = self.r.zrevrange(self._pz(puzzle_id) + "board", 0, int(limit) - 1, withscores=True)
        pids = [m.decode() for m, _ in rows]
        bests = self.r.hmget(self._pz(puzzle_id) + "best", pids) if pids else []
        names = self._display_names(pids)
        out = []
        for i, (pid, raw, name) in enumerate(zip(pids, bests, names)):
            row = json.loads(raw)
            out.append(BoardEntry(rank=i + 1, player_id=pid, nickname=name, score=float(row["score"]),
                                  caption=row["caption"] if show else None))
        return out

    def daily_leaderboard(self, date, limit: int = 20) -> list[BoardEntry]:
        """The day's board: each player's sum of best scores over the day's puzzles."""
        date = pz.parse_date(date)
        if int(limit) <= 0:
            return []
        rows = self.r.zrevrange(self._day(date) + ":board", 0, int(limit) - 1, withscores=True)
        pids = [m.decode() for m, _ in rows]
        names = self._display_names(pids)
        return [BoardEntry(rank=i + 1, player_id=pid, nickname=name, score=_decode_day(c)[0] / Q_SCALE,
                           caption=None)
                for i, ((_, c), pid, name) in enumerate(zip(rows, pids, names))]

    def daily_total(self, player_id: str, date) -> Optional[float]:
        raw = self.r.hget(self._day(pz.parse_date(date)) + ":tot", player_id)
        return int(raw) / Q_SCALE if raw is not None else None

    def daily_rank(self, player_id: str, date) -> Optional[int]:
        rank0 = self.r.zrevrank(self._day(pz.parse_date(date)) + ":board", player_id)
        return None if rank0 is None else int(rank0) + 1

    def submission_log(self, date, count: int = 1000) -> list[dict]:
        """The day's append-only log, oldest first (admin/export use)."""
        rows = self.r.xrange(self._day(pz.parse_date(date)) + ":log", count=count)
        return [{k.decode(): v.decode() for k, v in fields.items()} | {"id": sid.decode()} for sid, fields in rows]

    # ----- reveal -----
    def reveal(self, puzzle_id: str, top: int = 10) -> Reveal:
        """What a finished puzzle reveals: top captions, the machine's prompt and score, all best scores."""
        puzzle = self.get_puzzle(puzzle_id)
        if puzzle is None:
            raise ValueError(f"there is no puzzle {puzzle_id!r}")
        if self.day_state(puzzle.date) != "past":
            raise ValueError(f"puzzle {puzzle_id} is revealed after its day ({puzzle.date} UTC) ends")
        snap = self._snapshot(puzzle)
        board = self._pz(puzzle_id) + "board"
        scored = self.r.zrevrange(board, 0, -1, withscores=True)
        best_scores = [_decode_puzzle(c)[0] / Q_SCALE for _, c in scored]
        self_score = snap.get("self_score")
        beat = None
        if self_score is not None:
            beat = int(self.r.zcount(board, (_q(self_score) + 1) * PUZZLE_SHIFT, "+inf"))
        return Reveal(puzzle=puzzle, kind=snap.get("kind", puzzle.kind), title=snap.get("title"),
                      prompt=snap.get("prompt"), self_score=self_score,
                      reference_caption=snap.get("reference_caption"), attribution=snap.get("attribution"),
                      top=self.leaderboard(puzzle_id, limit=top, with_captions=True), players=len(scored),
                      beat_machine=beat, best_scores=best_scores)

    # ----- rate limiting and pub/sub -----
    def take_token(self, key: str, rate_per_s: float, burst: float, cost: float = 1.0) -> bool:
        """Token bucket in Redis (server clock): True when the action may go ahead."""
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        return bool(self._bucket(keys=[f"cap:rl:{key}"], args=[float(rate_per_s), float(burst), float(cost)]))

    def board_channel(self, puzzle_id: str) -> str:
        return f"{self._m}live:{puzzle_id}"

    def publish_board(self, puzzle_id: str, payload: dict) -> int:
        """Publish a leaderboard change to every process subscribed to this puzzle; returns receivers."""
        return int(self.r.publish(self.board_channel(puzzle_id), json.dumps(payload)))
