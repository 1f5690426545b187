"""The game service: the protocol as plain functions (parse a message, run the action, build the reply).

The websocket handler (game/web/ws.py) and the HTTP JSON endpoints (game/web/api.py)
are thin shells over `Game` and `parse_message`, so every rule lives here and
is testable without sockets. Messages are JSON objects with a `type`:

  client -> server                           server -> client
  hello {puzzle?}                            state {player, nickname, today, puzzle?...}
  draft {seq, puzzle, caption}               score {seq, puzzle, score} | dropped {seq}
  submit {puzzle, caption, seq?}             result {puzzle, score, best, rank, submissions_left, ...}
  subscribe {puzzles: [...]}                 subscribed {puzzles}, then board {...} now and on change
  hint {puzzle}                              hint {puzzle, word}
  room_* (Play with friends)                 see game/rooms.py
  ping                                       pong
  any mistake                                error {code, message, seq?}   (socket stays open)
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from typing import Optional

from engine.embeddings import LRUCache
from game import puzzles as pz

# Room messages ("Play with friends") are validated here like the others; game/rooms.py runs them.
ROOM_TYPES = ("room_create", "room_join", "room_draft", "room_lock", "room_start", "room_next", "room_skip",
              "room_kick", "room_host", "room_leave", "room_again")
CLIENT_TYPES = ("hello", "draft", "submit", "subscribe", "hint", "ping") + ROOM_TYPES
ROOM_REQUIRED = {"room_join": ("room",), "room_draft": ("seq", "room", "round", "caption"),
                 "room_lock": ("room", "round", "caption"), "room_start": ("room",), "room_next": ("room",),
                 "room_skip": ("room", "round"), "room_kick": ("room", "player"), "room_host": ("room", "player"),
                 "room_leave": ("room",), "room_again": ("room",)}
MAX_SUBSCRIPTIONS = 16
BOARD_LIMIT = 20
PUZZLE_CACHE_S = 5.0


class ProtocolError(Exception):
    """A mistake the player (or their client) made; the reply is an error message, nothing closes."""

    def __init__(self, code: str, message: str, seq=None):
        super().__init__(message)
        self.code, self.message, self.seq = code, message, seq

    def reply(self) -> dict:
        out = {"type": "error", "code": self.code, "message": self.message}
        if self.seq is not None:
            out["seq"] = self.seq
        return out


def error(code: str, message: str, seq=None) -> dict:
    return ProtocolError(code, message, seq).reply()


def parse_message(raw, max_bytes: int) -> dict:
    """Decode one client frame into a validated message dict, or raise ProtocolError."""
    if isinstance(raw, (bytes, bytearray)):
        size = len(raw)
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("bad_json", "messages must be UTF-8 JSON text") from None
    else:
        size = len(str(raw).encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError("too_big", f"message of {size} bytes is over the {max_bytes}-byte limit")
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_json", "that message is not valid JSON") from None
    return validate_message(msg)


def validate_message(msg) -> dict:
    """Check a decoded message's type and fields (shared by websocket frames and HTTP bodies)."""
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", "a message must be a JSON object with a \"type\"")
    seq = msg.get("seq") if _is_seq(msg.get("seq")) else None
    kind = msg.get("type")
    if kind is None:
        raise ProtocolError("missing_field", "the message has no \"type\"", seq)
    if kind not in CLIENT_TYPES:
        shown = str(kind)[:40]
        raise ProtocolError("unknown_type", f"unknown message type {shown!r}; known: {', '.join(CLIENT_TYPES)}", seq)
    required = {"draft": ("seq", "puzzle", "caption"), "submit": ("puzzle", "caption"),
                "hint": ("puzzle",), "subscribe": ("puzzles",), **ROOM_REQUIRED}.get(kind, ())
    for field in required:
        if field not in msg:
            raise ProtocolError("missing_field", f"a {kind} message needs \"{field}\"", seq)
    if kind in ("draft", "room_draft") and not _is_seq(msg["seq"]):
        raise ProtocolError("bad_field", "\"seq\" must be a non-negative whole number")
    for field in ("puzzle", "caption", "room", "player", "nickname", "source"):
        if field in msg and not isinstance(msg[field], str):
            raise ProtocolError("bad_field", f"\"{field}\" must be a string", seq)
    for field in ("round", "rounds", "seconds"):
        if field in msg and not _is_seq(msg[field]):
            raise ProtocolError("bad_field", f"\"{field}\" must be a non-negative whole number", seq)
    if kind == "subscribe":
        puzzles = msg["puzzles"]
        if not isinstance(puzzles, list) or not all(isinstance(p, str) for p in puzzles):
            raise ProtocolError("bad_field", "\"puzzles\" must be a list of puzzle ids")
        if len(puzzles) > MAX_SUBSCRIPTIONS:
            raise ProtocolError("bad_field", f"subscribe to at most {MAX_SUBSCRIPTIONS} puzzles")
    return msg


def _is_seq(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 53


def public_id(player_id: str) -> str:
    """What other players may see of a player: a short one-way hash, never the session id."""
    return hashlib.sha256(f"captionary-public:{player_id}".encode()).hexdigest()[:12]


class Game:
    """Game actions over the shared Store and the process's Scorer. No sockets, no Flask."""

    def __init__(self, store, scorer, *, max_caption_chars: int = 200, draft_rate=(12.0, 30), submit_rate=(2.0, 10)):
        self.store, self.scorer = store, scorer
        self.max_caption_chars = max_caption_chars
        self.draft_rate, self.submit_rate = draft_rate, submit_rate
        # Target embeddings never change once stored, so a per-process copy is a pure cache.
        self._embeddings: LRUCache = LRUCache(256)  # target id -> embedding (targets never change theirs)
        self._emb_lock = threading.Lock()
        self._puzzles: dict[str, tuple] = {}  # frozen puzzles by id -> (Puzzle, expiry)
        self._shown: tuple[float, frozenset] = (-1e9, frozenset())  # (when read, targets players have seen)

    # -- lookups ---------------------------------------------------------------------------------
    def puzzle(self, puzzle_id: str, seq=None):
        """(Puzzle, ranked) for an id from today (ranked) or a past day (practice); else an error."""
        try:
            day = dt.date.fromisoformat(pz.parse_puzzle_id(puzzle_id)[0])
        except ValueError:
            raise ProtocolError("unknown_puzzle", f"no puzzle {str(puzzle_id)[:40]!r} (ids look like 2026-11-27/1)",
                                seq) from None
        if day > self.today():
            raise ProtocolError("not_yet", f"puzzle {puzzle_id} belongs to a future day", seq)
        now = time.monotonic()
        puzzle, expires = self._puzzles.get(puzzle_id, (None, 0.0))
        if puzzle is None or now > expires:
            try:
                puzzle = self.store.get_puzzle(puzzle_id)
            except ValueError:
                puzzle = None
            # A frozen day keeps its puzzles (the store's SET NX snapshot), so a per-process copy
            # saves a Redis round trip per keystroke. Past days never change; today's may still be
            # rescheduled by an admin until its first submission, hence a few seconds' lifetime.
            if puzzle is not None and puzzle.frozen:
                ttl = PUZZLE_CACHE_S if day >= self.today() else float("inf")
                with self._emb_lock:
                    if len(self._puzzles) > 1024:
                        self._puzzles.clear()
                    self._puzzles[puzzle_id] = (puzzle, now + ttl)
        if puzzle is None:
            raise ProtocolError("unknown_puzzle", f"no puzzle {puzzle_id!r}", seq)
        return puzzle, day == self.today()

    def image_is_public(self, target_id: str) -> bool:
        """Whether players may see this target's image: shown today or on a past puzzle day.
        A per-process copy (a page load fetches several images at once), read again after a few
        seconds, or after one second for an id it lacks (a day that just began, a rescheduled
        today) but never more often, so requests for unknown ids cost no Redis work."""
        read_at, shown = self._shown
        now = time.monotonic()
        if now - read_at > PUZZLE_CACHE_S or (target_id not in shown and now - read_at > 1.0):
            shown = frozenset(self.store.shown_target_ids())
            self._shown = (now, shown)
        return target_id in shown

    def today(self) -> dt.date:
        """The puzzle day (UTC) by the store's clock, so the web and the store always agree."""
        return dt.date.fromisoformat(self.store.today())

    def embedding(self, target_id: str):
        emb = self._embeddings.get(target_id)
        if emb is None:
            emb = self.store.target_embedding(target_id)
            self._embeddings.put(target_id, emb)
        return emb

    def caption(self, caption: str, seq=None) -> str:
        """The caption stripped, or a readable error (empty, too long, bad characters).

        Cheap checks only, no tokenizing: they run before the rate limit is taken, and the
        tokenizer runs after it (`tokens`), so a client over its budget costs no BPE work.
        """
        from engine.scorer import CaptionError, validate_caption
        if not caption.strip():
            raise ProtocolError("empty_caption", "write something first", seq)
        if len(caption) > self.max_caption_chars:
            raise ProtocolError("caption_too_long",
                                f"captions are limited to {self.max_caption_chars} characters "
                                f"(this one has {len(caption)})", seq)
        try:
            return validate_caption(caption, self.max_caption_chars)
        except CaptionError as exc:
            raise ProtocolError("bad_caption", str(exc), seq) from None

    def tokens(self, caption: str, seq=None) -> str:
        """Tokenize a checked caption (refuses one with no readable words); after the rate limit."""
        from engine.scorer import CaptionError
        try:
            return self.scorer.validate_caption(caption)
        except CaptionError as exc:
            raise ProtocolError("bad_caption", str(exc), seq) from None

    def _score(self, player_id: str, puzzle, caption: str, seq=None) -> float:
        # stream = player + puzzle: consecutive drafts share a prefix, whose cached keys/values
        # the scorer reuses so a keystroke costs a few tokens, not a whole caption.
        return self.score_target(puzzle.target_id, caption, f"{player_id}:{puzzle.id}", seq)

    def score_target(self, target_id: str, caption: str, stream: str, seq=None) -> float:
        """A tokenized caption's score against a target, on a scorer stream (a daily puzzle's or a room round's)."""
        from engine.scorer import CaptionError, ScorerBusyError
        try:
            return float(self.scorer.score(caption, self.embedding(target_id), stream=stream))
        except ScorerBusyError:
            raise ProtocolError("busy", "the judge is busy right now; your draft was not scored, try again", seq)
        except CaptionError as exc:
            raise ProtocolError("bad_caption", str(exc), seq) from None

    # -- actions ---------------------------------------------------------------------------------
    def draft(self, player_id: str, msg: dict) -> dict:
        seq = msg["seq"]
        puzzle, _ = self.puzzle(msg["puzzle"], seq)
        caption = self.caption(msg["caption"], seq)
        # Order of work: cheap checks above, then the rate limit, then tokenizing and scoring.
        if not self.store.take_token(f"drafts:{player_id}", *self.draft_rate):
            raise ProtocolError("slow_down", "slow down: too many drafts at once", seq)
        caption = self.tokens(caption, seq)
        score = self._score(player_id, puzzle, caption, seq)
        return {"type": "score", "seq": seq, "puzzle": puzzle.id, "score": round(score, 6)}

    def submit(self, player_id: str, msg: dict) -> dict:
        seq = msg.get("seq") if _is_seq(msg.get("seq")) else None
        puzzle, ranked = self.puzzle(msg["puzzle"], seq)
        caption = self.caption(msg["caption"], seq)
        if ranked and self.store.submissions_left(player_id, puzzle.id) <= 0:
            # Cheap early answer; the store's atomic script enforces the cap for real (two tabs racing).
            raise ProtocolError("over_cap", f"no submissions left on this puzzle today "
                                            f"(the limit is {self.store.max_submissions})", seq)
        if not self.store.take_token(f"submits:{player_id}", *self.submit_rate):
            raise ProtocolError("slow_down", "slow down: wait a moment between submissions", seq)
        caption = self.tokens(caption, seq)
        score = self._score(player_id, puzzle, caption, seq)
        reply = {"type": "result", "puzzle": puzzle.id, "caption": caption, "score": round(score, 6)}
        if seq is not None:
            reply["seq"] = seq
        from game.store import SubmissionError
        try:
            # Past days are practice: scored and kept for the player, never on a ranked board.
            result = self.store.submit(player_id, puzzle.id, caption, score, practice=not ranked)
        except SubmissionError as exc:
            code = {"cap_reached": "over_cap", "day_over": "not_today", "not_started": "not_yet"}.get(
                exc.code, exc.code)
            raise ProtocolError(code, str(exc), seq) from None
        reply.update(practice=result.practice, best=round(result.best, 6), rank=result.rank,
                     submissions_left=result.submissions_left, improved=bool(result.improved))
        if ranked and result.improved:
            self.publish_board(puzzle.id)
        return reply

    def hint(self, player_id: str, msg: dict) -> dict:
        """The word the judge associates most with the image; using it is remembered and shown."""
        puzzle, _ = self.puzzle(msg["puzzle"])
        word = self.hint_word(puzzle)
        if not word:
            raise ProtocolError("no_hint", "there is no hint for this puzzle yet")
        self.store.mark_hint_used(player_id, puzzle.id)
        return {"type": "hint", "puzzle": puzzle.id, "word": word}

    def hint_word(self, puzzle) -> Optional[str]:
        if puzzle.hint_word:
            return puzzle.hint_word
        target = self.store.get_target(puzzle.target_id)  # hint computed after the day was frozen
        return target.hint_word if target else None

    def used_hint(self, player_id: str, puzzle) -> Optional[str]:
        if self.store.hint_used(player_id, puzzle.id):
            return self.hint_word(puzzle)
        return None

    def state(self, player_id: str, puzzle_id: Optional[str] = None) -> dict:
        out = {"type": "state", "player": public_id(player_id), "nickname": self.store.display_name(player_id),
               "today": self.today().isoformat(), "max_caption_chars": self.max_caption_chars,
               "model_id": self.store.model_id}
        if puzzle_id:
            puzzle, ranked = self.puzzle(puzzle_id)
            out["puzzle"] = self.puzzle_state(player_id, puzzle, ranked)
        return out

    def puzzle_state(self, player_id: str, puzzle, ranked: bool) -> dict:
        practice = not ranked
        attempts = self.store.attempts(player_id, puzzle.id, practice=practice)
        return {"id": puzzle.id, "ranked": ranked, "best": self.store.best(player_id, puzzle.id, practice=practice),
                "rank": self.store.rank(player_id, puzzle.id) if ranked else None,
                "submissions_left": self.store.submissions_left(player_id, puzzle.id) if ranked else None,
                "attempts": [{"caption": a.caption, "score": round(a.score, 6)} for a in attempts],
                "hint": self.used_hint(player_id, puzzle)}

    def board(self, puzzle_id: str, viewer: Optional[str] = None) -> dict:
        puzzle, ranked = self.puzzle(puzzle_id)
        entries = self.store.leaderboard(puzzle.id, limit=BOARD_LIMIT, with_captions=not ranked)
        rows = [board_entry(e, viewer) for e in entries]
        if entries:  # who used the hint is public: the board shows it next to their score
            for row, used in zip(rows, self.store.hint_users(puzzle.id, [e.player_id for e in entries])):
                if used:
                    row["hint"] = True
        return {"type": "board", "puzzle": puzzle.id, "entries": rows, "captions_hidden": ranked}

    def publish_board(self, puzzle_id: str) -> None:
        """Tell every web process (Redis pub/sub) that this puzzle's board changed."""
        payload = self.board(puzzle_id)
        self.store.publish_board(puzzle_id, payload)


def board_entry(entry, viewer: Optional[str] = None) -> dict:
    """A leaderboard row as other players may see it: public id, display name, score, caption if revealed."""
    row = {"rank": entry.rank, "player": public_id(entry.player_id), "nickname": entry.nickname,
           "score": round(entry.score, 6)}
    if getattr(entry, "caption", None) is not None:
        row["caption"] = entry.caption
    if viewer is not None and entry.player_id == viewer:
        row["you"] = True
    return row
