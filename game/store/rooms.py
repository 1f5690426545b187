"""Rooms ("Play with friends") in Redis: seats, rounds on the server's clock, scores, reveals, totals.

Everything a room is lives under `cap:room:{code}` (nothing in a process's memory), so the
players of one room may sit on different web processes. Rooms never touch the daily boards,
the daily caps or the submission log.

  cap:room:{code}            hash   host, phase (lobby|round|reveal|over), round, rounds, seconds,
                                    source, pictures (JSON target ids), ends_at (ms), game (play-again
                                    counter), joins (seat counter), host_left (ms, host's last socket closed)
  cap:room:{code}:members    hash   pid -> JSON {pub, nick, role (player|spectator), from (first round
                                    played in this game), order}
  cap:room:{code}:online     hash   pid -> open sockets (presence; an empty room expires)
  cap:room:{code}:round      hash   pid -> JSON {score, caption, ms, locked}: what counts this round
  cap:room:{code}:bars       hash   public id -> latest draft score (the live bars; never text)
  cap:room:{code}:totals     hash   pid -> points this game
  cap:room:{code}:results    list   JSON reveal of each finished round, in order
  cap:room:{code}:banned     set    pids the host removed (they cannot rejoin this room)
  cap:room:{code}:bar_lock / :bar_pending   the ≤10/s throttle of bar messages (room_draft.lua)
  channel cap:roomev:{code}  pub/sub: "room" state snapshots and "room_bars" messages

Transitions (join, start, round end, host actions) are WATCH/MULTI transactions over the
room's hashes: read the room, change it in Python, write it back, retry if anyone wrote in
between. The hot path (a draft per keystroke) is one Lua script (room_draft.lua). Time is the
store's clock (Redis TIME in production, shared by every process); a client's idea of time is
never read.
"""
from __future__ import annotations

import json
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import redis

_LUA_DIR = Path(__file__).with_name("lua")
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I: read aloud across a room
CODE_LENGTH = 5
SOURCES = ("archive", "photos", "gan")  # revealed past days' pictures | starter photos | revealed GAN targets
PHASES = ("lobby", "round", "reveal", "over")
POINTS_PER_RANK = 10  # last place with a caption scores 10, each place above 10 more
ROUND_SECONDS = (15, 300)
MAX_ROUNDS = 20


class RoomError(ValueError):
    """A room action that cannot happen; `code` is the protocol's error code, the message readable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class RoomLimits:
    max_players: int = 24  # seats that play; later joiners watch
    max_spectators: int = 24  # watchers beyond the players; a room with both full refuses joins
    bar_window_ms: int = 100  # at most one live-bar message per room per window (10/s)
    host_grace_ms: int = 10_000  # a host whose sockets all closed keeps the role this long (a reload)
    ttl_active_s: int = 6 * 3600  # a room's keys live this long after the last action while anyone is in
    ttl_empty_s: int = 600  # ...and this long once nobody is connected (then the room is gone)


@dataclass
class Room:
    """One room as read inside a transaction; changed in Python, written back whole."""

    code: str
    meta: dict
    members: dict  # pid -> member dict
    round: dict  # pid -> {score, caption, ms, locked}
    totals: dict  # pid -> int
    online: dict  # pid -> int
    new_results: list = field(default_factory=list)
    banned_now: list = field(default_factory=list)
    bars_gone: list = field(default_factory=list)  # public ids whose bars go (removed players)
    clear_round: bool = False  # a new round: the round's captions and bars start empty
    reset_results: bool = False  # play again: the reveals of the last game go

    @property
    def phase(self) -> str:
        return self.meta["phase"]

    @property
    def number(self) -> int:
        return int(self.meta.get("round") or 0)

    @property
    def host(self) -> str:
        return self.meta.get("host", "")

    def players(self) -> list[str]:
        """Seated players in join order."""
        return sorted((p for p, m in self.members.items() if m["role"] == "player"),
                      key=lambda p: self.members[p]["order"])

    def playing(self) -> list[str]:
        """Players in the running (or last) round: late joiners wait for the next one."""
        return [p for p in self.players() if int(self.members[p]["from"]) <= self.number]


class RoomStore:
    """Room state for any number of web processes. `now` gives unix seconds (the Store's clock)."""

    def __init__(self, redis_client: redis.Redis, now: Callable[[], float], limits: RoomLimits = RoomLimits()):
        self.r, self._now, self.limits = redis_client, now, limits
        self._draft = self.r.register_script((_LUA_DIR / "room_draft.lua").read_text())
        self._flush = self.r.register_script((_LUA_DIR / "room_bars_flush.lua").read_text())
        self._presence = self.r.register_script((_LUA_DIR / "room_presence.lua").read_text())

    # -- keys ---------------------------------------------------------------------------------------
    @staticmethod
    def key(code: str, part: str = "") -> str:
        return f"cap:room:{code}" + (f":{part}" if part else "")

    @staticmethod
    def channel(code: str) -> str:
        return f"cap:roomev:{code}"

    def _all_keys(self, code: str) -> list[str]:
        return [self.key(code)] + [self.key(code, p) for p in
                                   ("online", "members", "round", "bars", "totals", "results", "banned")]

    def now_ms(self) -> int:
        return int(self._now() * 1000)

    @staticmethod
    def normalize_code(code) -> str:
        """An upper-cased code, or RoomError unknown_room for anything that cannot be one."""
        text = str(code or "").strip().upper()
        if len(text) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in text):
            raise RoomError("unknown_room", f"there is no room {str(code)[:12]!r} (codes are {CODE_LENGTH} "
                                            "letters and digits, e.g. K7QPM)")
        return text

    # -- create and read ----------------------------------------------------------------------------
    def create(self, host: str, *, rounds: int, seconds: int, source: str, pictures: list[str]) -> str:
        """A new room in the lobby with `host` as its host (who still joins like anyone); returns its code."""
        for _ in range(20):
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            meta = {"host": host, "phase": "lobby", "round": 0, "rounds": rounds, "seconds": seconds,
                    "source": source, "pool": json.dumps(pictures), "pictures": "[]", "ends_at": 0, "game": 1,
                    "joins": 0, "created": self.now_ms()}
            # HSETNX on a field only a real room has: two creators drawing the same code cannot both win.
            if self.r.hsetnx(self.key(code), "created", meta["created"]):
                pipe = self.r.pipeline(transaction=True)
                pipe.hset(self.key(code), mapping=meta)
                pipe.expire(self.key(code), self.limits.ttl_empty_s)  # nobody connected yet
                pipe.execute()
                return code
        raise RoomError("internal", "could not find a free room code; please try again")

    def exists(self, code: str) -> bool:
        return bool(self.r.exists(self.key(code)))

    def read(self, code: str, client=None) -> Optional[Room]:
        c = client or self.r
        meta = c.hgetall(self.key(code))
        if not meta:
            return None
        dec = {k.decode(): v.decode() for k, v in meta.items()}

        def hash_json(part):
            return {k.decode(): json.loads(v) for k, v in c.hgetall(self.key(code, part)).items()}

        return Room(code=code, meta=dec, members=hash_json("members"), round=hash_json("round"),
                    totals={k.decode(): int(v) for k, v in c.hgetall(self.key(code, "totals")).items()},
                    online={k.decode(): int(v) for k, v in c.hgetall(self.key(code, "online")).items()})

    def round_view(self, code: str) -> Optional[Room]:
        """The room's phase, round, seats and round entries in one round trip, without a transaction
        (no totals, no presence): for checks that only decide whether a transaction is worth running."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(self.key(code), "phase", "round")
        pipe.hgetall(self.key(code, "members"))
        pipe.hgetall(self.key(code, "round"))
        (phase, number), members, entries = pipe.execute()
        if phase is None:
            return None
        return Room(code=code, meta={"phase": phase.decode(), "round": (number or b"0").decode()},
                    members={k.decode(): json.loads(v) for k, v in members.items()},
                    round={k.decode(): json.loads(v) for k, v in entries.items()}, totals={}, online={})

    def results(self, code: str) -> list[dict]:
        return [json.loads(r) for r in self.r.lrange(self.key(code, "results"), 0, -1)]

    def bars(self, code: str) -> dict:
        return {k.decode(): float(v) for k, v in self.r.hgetall(self.key(code, "bars")).items()}

    def is_banned(self, code: str, pid: str) -> bool:
        return bool(self.r.sismember(self.key(code, "banned"), pid))

    # -- the transaction every transition goes through ----------------------------------------------
    def transact(self, code: str, change: Callable[[Room], object]):
        """Read the room, apply `change` (which may raise RoomError: nothing is written), write it back.

        WATCHed: a draft, a presence change or another transition landing in between makes the
        write fail and the change run again on fresh state, so two processes never both end a round.
        """
        watched = [self.key(code, p) for p in ("members", "round", "online", "totals")] + [self.key(code)]
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*watched)
                    room = self.read(code, pipe)
                    if room is None:
                        pipe.unwatch()
                        raise RoomError("unknown_room", f"there is no room {code} (it may have expired)")
                    result = change(room)
                    pipe.multi()
                    self._write(pipe, room)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue

    def _write(self, pipe, room: Room) -> None:
        code = room.code
        pipe.delete(self.key(code))  # whole, so a field the change dropped (host_left) goes too
        pipe.hset(self.key(code), mapping=room.meta)
        pipe.delete(self.key(code, "members"))
        if room.members:
            pipe.hset(self.key(code, "members"), mapping={p: json.dumps(m) for p, m in room.members.items()})
        pipe.delete(self.key(code, "totals"))
        if room.totals:
            pipe.hset(self.key(code, "totals"), mapping=room.totals)
        pipe.delete(self.key(code, "round"))
        if room.clear_round:
            pipe.delete(self.key(code, "bars"), self.key(code, "bar_pending"))
        elif room.round:
            pipe.hset(self.key(code, "round"), mapping={p: json.dumps(v) for p, v in room.round.items()})
        if room.reset_results:
            pipe.delete(self.key(code, "results"))
        for result in room.new_results:
            pipe.rpush(self.key(code, "results"), json.dumps(result))
        if room.bars_gone:
            pipe.hdel(self.key(code, "bars"), *room.bars_gone)
        if room.banned_now:
            pipe.sadd(self.key(code, "banned"), *room.banned_now)
        ttl = self.limits.ttl_active_s if any(room.online.values()) else self.limits.ttl_empty_s
        for key in self._all_keys(code):
            pipe.expire(key, ttl)

    # -- seats --------------------------------------------------------------------------------------
    def join(self, code: str, pid: str, pub: str, nickname: str) -> tuple[dict, bool]:
        """Seat a player (or a spectator once the seats are full); (member, resumed).

        A member joining again (a reload, a second tab, another process after a reconnect)
        resumes their seat. Late joiners play from the next round.
        """
        if self.is_banned(code, pid):
            raise RoomError("removed", "the host removed you from this room")

        def seat(room: Room):
            member = room.members.get(pid)
            if member is not None:
                member["nick"] = nickname
                return dict(member), True
            players = len(room.players())
            if players < self.limits.max_players:
                role = "player"
            elif len(room.members) - players < self.limits.max_spectators:
                role = "spectator"
            else:
                raise RoomError("room_full", f"room {code} is full ({self.limits.max_players} players and "
                                             f"{self.limits.max_spectators} watching)")
            order = int(room.meta.get("joins") or 0) + 1
            room.meta["joins"] = order
            # In the lobby the next round is round 1; during a round or a reveal, the one after it.
            member = {"pub": pub, "nick": nickname, "role": role, "from": room.number + 1, "order": order}
            room.members[pid] = member
            if not room.host or room.host not in room.members:
                room.meta["host"] = pid  # the creator left before anyone else came
            return dict(member), False

        return self.transact(code, seat)

    def presence(self, code: str, pid: str, delta: int) -> int:
        """A socket of `pid` opened (+1) or closed (-1) in the room; returns sockets open there (-1: gone)."""
        # _all_keys starts with the meta hash and the online hash, as the script expects.
        return int(self._presence(keys=self._all_keys(code),
                                  args=[pid, int(delta), self.now_ms(), self.limits.ttl_active_s,
                                        self.limits.ttl_empty_s]))

    # -- rounds -------------------------------------------------------------------------------------
    def draft(self, code: str, pid: str, round_no: int, score: float, caption: str, *, lock: bool = False,
              target: str = "") -> bool:
        """Record a scored draft (or a lock-in) in the running round; True when the bars went out now."""
        return self.draft_when(code, pid, round_no, score, caption, lock=lock, target=target)[0]

    def draft_when(self, code: str, pid: str, round_no: int, score: float, caption: str, *, lock: bool = False,
                   target: str = "") -> tuple[bool, int]:
        """`draft`, and when the bars were held back, the milliseconds until the throttle window ends.

        `target`: the picture the score is against. When given, the script records nothing unless it
        is still the round's picture (RoomError "moved": a new game drew new pictures meanwhile), so a
        process may score against pictures it remembers instead of reading them before every draft.
        """
        reply = self._draft(keys=[self.key(code), self.key(code, "members"), self.key(code, "round"),
                                  self.key(code, "bars"), self.key(code, "bar_lock"), self.key(code, "bar_pending")],
                            args=[pid, int(round_no), repr(float(score)), caption, self.now_ms(),
                                  "1" if lock else "0", self.channel(code), self.limits.bar_window_ms, code, target])
        status = reply[0].decode()
        if status == "ok":
            return bool(reply[1]), int(reply[2]) if len(reply) > 2 else 0
        if status == "phase" and not reply[1]:
            raise RoomError("unknown_room", f"there is no room {code} (it may have expired)")
        messages = {
            "phase": ("no_round", "no round is running in this room right now"),
            "stale": ("stale_round", "that round is over; the room is on another round now"),
            "moved": ("moved", "the room started a new game with other pictures"),
            "over": ("round_over", "time is up for this round (the server's clock decides)"),
            "not_member": ("not_in_room", "join the room first"),
            "not_playing": ("not_playing", "you are watching this round; you play from the next one"),
            "locked": ("locked_in", "you already locked in your caption for this round"),
        }
        code_, message = messages[status]
        raise RoomError(code_, message)

    def flush_bars(self, code: str) -> int:
        """Publish pending bars if the throttle window allows: 0 nothing pending, 1 sent, 2 try again soon."""
        return self.flush_bars_when(code)[0]

    def flush_bars_when(self, code: str) -> tuple[int, int]:
        """flush_bars, and with 2 the milliseconds until the window ends (when trying again can succeed)."""
        status, wait_ms = self._flush(keys=[self.key(code), self.key(code, "bars"), self.key(code, "bar_lock"),
                                            self.key(code, "bar_pending")],
                                      args=[self.channel(code), self.limits.bar_window_ms, code])
        return int(status), int(wait_ms)

    def start_round(self, room: Room, picture_pool: Optional[list[str]] = None) -> None:
        """(Inside a transaction) begin the next round on the server's clock."""
        if room.number == 0:
            pool = picture_pool if picture_pool is not None else json.loads(room.meta.get("pool") or "[]")
            rounds = int(room.meta["rounds"])
            if len(pool) < rounds:
                raise RoomError("no_pictures", f"only {len(pool)} pictures are available for {rounds} rounds")
            room.meta["pictures"] = json.dumps(random.SystemRandom().sample(pool, rounds))
        room.meta["round"] = room.number + 1
        room.meta["phase"] = "round"
        room.meta["ends_at"] = self.now_ms() + int(room.meta["seconds"]) * 1000
        room.round = {}
        room.clear_round = True

    def end_round(self, room: Room, *, skipped: bool = False, target_info: Callable[[str], dict] = None) -> dict:
        """(Inside a transaction) close the running round: rank what counts, award points, reveal."""
        n = room.number
        rows = []
        for pid in room.playing():
            entry = room.round.get(pid)
            if entry is None:
                continue
            rows.append((float(entry["score"]), int(entry["ms"]), pid, entry))
        rows.sort(key=lambda r: (-r[0], r[1]))  # ties go to the earlier caption
        entries = []
        for rank, (score, _, pid, entry) in enumerate(rows, start=1):
            points = 0 if skipped else POINTS_PER_RANK * (len(rows) - rank + 1)
            room.totals[pid] = room.totals.get(pid, 0) + points
            member = room.members[pid]
            entries.append({"player": member["pub"], "nickname": member["nick"], "caption": entry["caption"],
                            "score": round(score, 6), "rank": rank, "points": points,
                            "locked": bool(entry.get("locked"))})
        pictures = json.loads(room.meta["pictures"])
        # The round's target id goes out only now, with its reveal (the picture was served by round URL
        # until then): players may ask /api/explain about the finished round (game/explain.py).
        result = {"round": n, "skipped": skipped, "target": pictures[n - 1], "entries": entries}
        if target_info is not None:
            result.update(target_info(pictures[n - 1]))
        room.new_results.append(result)
        room.meta["phase"] = "over" if n >= int(room.meta["rounds"]) else "reveal"
        room.meta["ends_at"] = 0
        return result

    def play_again(self, room: Room) -> None:
        """(Inside a transaction) a new game with the same people: totals cleared, spectators seated."""
        room.meta.update(phase="lobby", round=0, ends_at=0, pictures="[]", game=int(room.meta.get("game", 1)) + 1,
                         )
        room.reset_results = True
        room.totals = {}
        room.round = {}
        room.clear_round = True
        seated = len(room.players())
        for pid in sorted(room.members, key=lambda p: room.members[p]["order"]):
            m = room.members[pid]
            m["from"] = 1
            if m["role"] == "spectator" and seated < self.limits.max_players:
                m["role"] = "player"
                seated += 1

    def hand_on(self, room: Room, to: Optional[str] = None) -> Optional[str]:
        """(Inside a transaction) make `to` (or the longest-seated connected member) the host."""
        if to is None:
            candidates = sorted((p for p in room.members if p != room.host),
                                key=lambda p: (room.online.get(p, 0) <= 0, room.members[p]["role"] != "player",
                                               room.members[p]["order"]))
            to = candidates[0] if candidates else ""
        room.meta["host"] = to
        room.meta.pop("host_left", None)
        return to or None

    def remove(self, room: Room, pid: str, *, ban: bool) -> None:
        """(Inside a transaction) take a member out of the room (and keep them out if banned)."""
        member = room.members.pop(pid, None)
        room.round.pop(pid, None)
        room.totals.pop(pid, None)
        if member is not None:
            room.bars_gone.append(member["pub"])
        if ban:
            room.banned_now.append(pid)
        if room.host == pid:
            self.hand_on(room)
