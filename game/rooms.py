"""Play with friends: the room protocol as plain functions over the RoomStore and the Game's judge.

The websocket (game/web/ws.py) hands every `room_*` message here; state changes are
published over Redis pub/sub (channel cap:roomev:{code}) as whole `room` snapshots, and
the throttled live bars as `room_bars` (scores only, never text), so every web process's
sockets in a room see the same thing. Nothing here keeps a room in memory.

  client -> server                                server -> client
  room_create {rounds?, seconds?, source?, nickname?} room_created {room}
  room_join {room, nickname?}                     room_joined {room, you, resumed}, and a room {...}
                                                  push (the caller marks the seat online, publishes)
  room_draft {seq, room, round, caption}          room_score {seq, room, round, score}
  room_lock {room, round, caption}                room_locked {room, round, caption, score}
  room_start | room_next | room_leave | room_again {room}     room_done {action, room}
  room_skip {room, round}                         room_done
  room_kick | room_host {room, player (public id)}           room_done
  pushed to everyone in the room                  room {state snapshot}, room_bars {round, bars}

A round's picture is served by round URL (picture_url) while it runs; its target id first goes
out in that round's reveal (`result.target` in the reveal and podium snapshots), so players can
ask /api/explain about it with {target, room} (game/explain.py, checked by finished_picture).

Mistakes answer `error {code, message}` like the rest of the protocol: unknown_room,
room_full, not_host, already_joined, stale_round, round_over, no_round, not_playing,
locked_in, removed, bad_phase, nickname_needed, bad_nickname, nickname_taken, slow_down.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Optional

from engine.embeddings import LRUCache
from game.service import ProtocolError, public_id
from game.store.rooms import (MAX_ROUNDS, ROUND_SECONDS, SOURCES, Room, RoomError, RoomLimits, RoomStore)

DEFAULT_ROUNDS = 5
DEFAULT_SECONDS = 60
SOURCE_LABELS = {"archive": "Past days' pictures", "photos": "Starter photos",
                 "gan": "The machine's pictures (already revealed)"}


def picture_url(code: str, game: int, round_no: int) -> str:
    """The round's picture, served by game/web/rooms.py only once that round has begun."""
    return f"/rooms/{code}/picture/{game}-{round_no}.png"


class Rooms:
    """Room actions for one process: the Game (caption rules, rate limits, judge), the Store, the RoomStore."""

    def __init__(self, game, limits: RoomLimits = RoomLimits()):
        self.game, self.store = game, game.store
        self.rooms = RoomStore(self.store.r, self.store.now, limits)
        self._starter: Optional[set] = None  # starter photo target ids (the manifest never changes at run time)
        # Rooms whose last drafts here await the end of a throttle window -> when it ends (time.monotonic()):
        # the ticker wakes and asks Redis then (asking at a fixed period, most asks were "not yet", a round
        # trip each, and a bar waited up to one period after its window ended).
        self.pending_bars: dict[str, float] = {}
        # Room code -> its game's pictures, as last read here. A draft scores against the remembered
        # picture and room_draft.lua records it only if that is still the round's picture ("moved"
        # otherwise: read again, score again), which saves a Redis round trip on every keystroke.
        self._pictures: LRUCache[list] = LRUCache(1024)
        self._pending_lock = threading.Lock()
        self._pending_changed = threading.Condition(self._pending_lock)  # wakes the ticker for a new due time

    # -- pictures -----------------------------------------------------------------------------------
    def picture_pool(self, source: str) -> list[str]:
        """Target ids a room may show: revealed or starter pictures only, never a running day's or an unseen GAN."""
        store = self.store
        today = store.today()
        running = {p.target_id for p in store.puzzles_for(today)}  # a day still being played
        if source == "photos":
            ids = self._starter_ids()
        else:
            ids = set()
            for day in store.days():
                if day < today:  # finished days only: their reveal is public
                    ids.update(p.target_id for p in store.puzzles_for(day))
        ready = set(store.pool())  # embedded for this model and not removed
        out = []
        for tid in sorted(ids - running):
            if tid not in ready:
                continue
            if source == "gan":
                target = store.get_target(tid)
                if target is None or target.kind != "gan":
                    continue
            out.append(tid)
        return out

    def _starter_ids(self) -> set:
        if self._starter is None:
            import hashlib
            from game import photos
            found = set()
            try:
                for entry in photos.starter_manifest():
                    tid = self.store.target_by_sha(hashlib.sha256(photos.read_photo(entry["path"])).hexdigest())
                    if tid:
                        found.add(tid)
            except (OSError, ValueError):
                pass  # no assets in this installation: the source is simply empty
            self._starter = found
        return self._starter

    def source_counts(self) -> dict:
        return {s: len(self.picture_pool(s)) for s in SOURCES}

    def target_info(self, target_id: str) -> dict:
        """What a reveal shows of a picture: for GAN pictures the machine's prompt and its own score."""
        target = self.store.get_target(target_id)
        if target is None:
            return {"kind": "photo"}
        info = {"kind": target.kind, "title": target.title, "attribution": target.attribution}
        if target.kind == "gan":  # every room picture is revealed already (picture_pool): the prompt is public
            info.update(prompt=target.prompt, machine_score=None if target.self_score is None
                        else round(float(target.self_score), 6))
        return info

    # -- helpers ------------------------------------------------------------------------------------
    def _code(self, msg) -> str:
        try:
            return self.rooms.normalize_code(msg.get("room"))
        except RoomError as exc:
            raise ProtocolError(exc.code, exc.message) from None

    def _limit(self, pid: str, seq=None) -> None:
        if not self.store.take_token(f"rooms:{pid}", *self.game.submit_rate):
            raise ProtocolError("slow_down", "slow down: too many room actions at once", seq)

    def _transact(self, code: str, change):
        try:
            return self.rooms.transact(code, change)
        except RoomError as exc:
            raise ProtocolError(exc.code, exc.message) from None

    @staticmethod
    def _host_only(room: Room, pid: str, action: str) -> None:
        if room.host != pid:
            raise RoomError("not_host", f"only the host can {action}")

    def _nickname(self, pid: str, msg) -> str:
        given = msg.get("nickname")
        if given is not None and given.strip():
            try:
                return self.store.set_nickname(pid, given) if given.strip() != self.store.nickname(pid) else given.strip()
            except ValueError as exc:  # the rules (bad_nickname) or NicknameTaken
                raise ProtocolError(getattr(exc, "code", "bad_nickname"), str(exc)) from None
        name = self.store.nickname(pid)
        if not name:
            raise ProtocolError("nickname_needed", "choose a nickname to join the room")
        return name

    # -- actions ------------------------------------------------------------------------------------
    def create(self, pid: str, msg: dict) -> dict:
        rounds = msg.get("rounds", DEFAULT_ROUNDS)
        seconds = msg.get("seconds", DEFAULT_SECONDS)
        source = msg.get("source", "archive")
        if not 1 <= rounds <= MAX_ROUNDS:
            raise ProtocolError("bad_field", f"a game has 1 to {MAX_ROUNDS} rounds")
        if not ROUND_SECONDS[0] <= seconds <= ROUND_SECONDS[1]:
            raise ProtocolError("bad_field", f"a round lasts {ROUND_SECONDS[0]} to {ROUND_SECONDS[1]} seconds")
        if source not in SOURCES:
            raise ProtocolError("bad_field", f"the picture source is one of {', '.join(SOURCES)}")
        self._limit(pid)
        pool = self.picture_pool(source)
        if len(pool) < rounds:
            raise ProtocolError("no_pictures", f"{SOURCE_LABELS[source]} has {len(pool)} picture"
                                               f"{'' if len(pool) == 1 else 's'}; choose at most {len(pool)} rounds "
                                               "or another source" if pool else
                                f"{SOURCE_LABELS[source]} has no pictures yet; choose another source")
        nickname = self._nickname(pid, msg)  # last: a refused room leaves the player's nickname as it was
        code = self.rooms.create(pid, rounds=rounds, seconds=seconds, source=source, pictures=pool)
        self.rooms.join(code, pid, public_id(pid), nickname)
        return {"type": "room_created", "room": code}

    def join(self, pid: str, msg: dict) -> tuple[str, dict]:
        code = self._code(msg)
        if not self.rooms.exists(code):
            raise ProtocolError("unknown_room", f"there is no room {code} (it may have expired)")
        nickname = self._nickname(pid, msg)
        self._limit(pid)
        try:
            member, resumed = self.rooms.join(code, pid, public_id(pid), nickname)
        except RoomError as exc:
            raise ProtocolError(exc.code, exc.message) from None
        self.tick(code)  # a room nobody watched may have a round past its end
        room = self.rooms.read(code)
        mine = room.round.get(pid) if room else None
        you = {"player": member["pub"], "nickname": member["nick"], "role": member["role"], "from": member["from"],
               "host": room is not None and room.host == pid,
               "draft": mine and {"caption": mine["caption"], "score": round(float(mine["score"]), 6),
                                  "locked": bool(mine.get("locked"))}}
        return code, {"type": "room_joined", "room": code, "you": you, "resumed": resumed}

    def _round_target(self, code: str, round_no: int, seq=None, fresh: bool = False) -> str:
        """The round's picture: remembered (checked again when the draft is recorded) or read from Redis."""
        pictures = None if fresh else self._pictures.get(code)
        if pictures is None or not 1 <= round_no <= len(pictures):  # unknown here, or maybe a newer game
            raw = self.store.r.hget(self.rooms.key(code), "pictures")
            if raw is None:
                raise ProtocolError("unknown_room", f"there is no room {code} (it may have expired)", seq)
            pictures = json.loads(raw)
            self._pictures.put(code, pictures)  # (a lobby's [] too: it holds no round, so it is read again)
        if not 1 <= round_no <= len(pictures):
            raise ProtocolError("stale_round", f"round {round_no} is not this room's round", seq)
        return pictures[round_no - 1]

    def _record(self, pid: str, code: str, round_no: int, caption: str, seq=None, *, lock: bool = False):
        """Score `caption` against the round's picture and record it; (score, bars sent now)."""
        for attempt in range(3):
            target = self._round_target(code, round_no, seq, fresh=attempt > 0)
            score = self.game.score_target(target, caption, self.stream(pid, code), seq)
            try:
                sent, wait_ms = self.rooms.draft_when(code, pid, round_no, score, caption, lock=lock, target=target)
                if not sent and not lock:  # inside the throttle window: this process's ticker sends the bars
                    self._hold_bars(code, wait_ms)  # when it ends (a lock-in's own snapshot carries the bars)
                return score, sent
            except RoomError as exc:
                if exc.code == "moved":  # a new game drew new pictures since they were read here
                    continue
                if exc.code == "no_round" and attempt == 0:  # perhaps a new game's lobby, which has no
                    self._round_target(code, round_no, seq, fresh=True)  # pictures: stale_round, as a read says
                raise ProtocolError(exc.code, exc.message, seq) from None
        raise ProtocolError("stale_round", f"round {round_no} is not this room's round", seq)

    def draft(self, pid: str, msg: dict) -> dict:
        seq, code, round_no = msg["seq"], self._code(msg), msg["round"]
        caption = self.game.caption(msg["caption"], seq)
        if not self.store.take_token(f"drafts:{pid}", *self.game.draft_rate):
            raise ProtocolError("slow_down", "slow down: too many drafts at once", seq)
        self._round_target(code, round_no, seq)  # refused before the tokenizer, as always
        caption = self.game.tokens(caption, seq)
        score, _ = self._record(pid, code, round_no, caption, seq)
        return {"type": "room_score", "seq": seq, "room": code, "round": round_no, "score": round(score, 6)}

    def _hold_bars(self, code: str, wait_ms: int) -> None:
        due = time.monotonic() + max(wait_ms, 1) / 1000  # at least 1 ms: never a busy loop of "not yet"
        with self._pending_lock:
            self.pending_bars[code] = min(due, self.pending_bars.get(code, due))
            self._pending_changed.notify_all()

    def wait_for_pending_bars(self, until: float) -> None:
        """Sleep until the earliest held-back bar is due or until `until` (time.monotonic()), whichever
        comes first. A bar held back meanwhile wakes the sleeper (the ticker), which then sleeps until that
        bar's window ends: bars go out when their window ends, not at the next poll of a fixed period."""
        with self._pending_lock:
            while True:
                wake = min(min(self.pending_bars.values(), default=until), until)
                timeout = wake - time.monotonic()
                if timeout <= 0 or not self._pending_changed.wait(timeout):
                    return

    def flush_pending_bars(self) -> None:
        """Send the bars of rooms whose drafts fell inside a throttle window, once the window allows."""
        now = time.monotonic()
        with self._pending_lock:
            codes = [code for code, due in self.pending_bars.items() if due <= now]
            for code in codes:
                del self.pending_bars[code]
        for code in codes:
            status, wait_ms = self.rooms.flush_bars_when(code)
            if status == 2:  # another process's draft opened a new window meanwhile
                self._hold_bars(code, wait_ms)

    @staticmethod
    def stream(pid: str, code: str) -> str:
        """The scorer stream of a player's drafts in a room (the ws frees it when the socket closes)."""
        return f"{pid}:room:{code}"

    def lock(self, pid: str, msg: dict) -> dict:
        code, round_no = self._code(msg), msg["round"]
        caption = self.game.caption(msg["caption"])
        self._limit(pid)
        self._round_target(code, round_no)  # refused before the tokenizer, as always
        caption = self.game.tokens(caption)
        score, _ = self._record(pid, code, round_no, caption, lock=True)

        def everyone_locked(room: Optional[Room]) -> bool:
            playing = room.playing() if room is not None else []
            return bool(room is not None and room.phase == "round" and room.number == round_no and playing
                        and all(room.round.get(p, {}).get("locked") for p in playing))

        def end_if_everyone_locked(room: Room):
            if everyone_locked(room):
                self.rooms.end_round(room, target_info=self.target_info)

        # The transaction (WATCH, the whole room read and written back, retried whenever a draft lands
        # meanwhile) only when a cheap read says this was the last lock-in: it was most of a web worker's
        # busy time while rooms locked in under bench/rooms_load.py. Each lock-in is recorded before its
        # check, so whoever locks in last sees everyone locked and ends the round.
        if everyone_locked(self.rooms.round_view(code)):
            self._transact(code, end_if_everyone_locked)
        self.publish(code)
        return {"type": "room_locked", "room": code, "round": round_no, "caption": caption, "score": round(score, 6)}

    def host_action(self, pid: str, msg: dict) -> dict:
        """start, next, skip, kick, host (hand on), again: the host's buttons; leave: anyone's."""
        kind = msg["type"][len("room_"):]
        code = self._code(msg)
        self._limit(pid)
        target_pid = None
        if kind in ("kick", "host"):
            room = self.rooms.read(code)
            target_pid = next((p for p, m in (room.members.items() if room else ()) if m["pub"] == msg["player"]),
                              None)

        def change(room: Room):
            if kind == "leave":
                if pid not in room.members:
                    raise RoomError("not_in_room", "you are not in this room")
                self.rooms.remove(room, pid, ban=False)
                return
            self._host_only(room, pid, {"start": "start the game", "next": "start the next round",
                                        "skip": "skip a round", "kick": "remove a player",
                                        "host": "hand the host role on", "again": "start a new game"}[kind])
            if kind == "start":
                if room.phase != "lobby":
                    raise RoomError("bad_phase", "the game has already started")
                self.rooms.start_round(room, self.picture_pool(room.meta["source"]))
            elif kind == "next":
                if room.phase != "reveal":
                    raise RoomError("bad_phase", "the next round starts after a round's reveal")
                self.rooms.start_round(room)
            elif kind == "skip":
                if room.phase != "round" or room.number != msg["round"]:
                    raise RoomError("stale_round", f"round {msg['round']} is not running")
                self.rooms.end_round(room, skipped=True, target_info=self.target_info)
            elif kind in ("kick", "host"):
                if target_pid is None or target_pid not in room.members:
                    raise RoomError("not_in_room", "that player is not in this room")
                if kind == "kick":
                    if target_pid == pid:
                        raise RoomError("bad_field", "the host cannot remove themselves (hand the role on, or leave)")
                    self.rooms.remove(room, target_pid, ban=True)
                else:
                    self.rooms.hand_on(room, target_pid)
            elif kind == "again":
                if room.phase != "over":
                    raise RoomError("bad_phase", "a new game starts once this one is over")
                self.rooms.play_again(room)

        self._transact(code, change)
        self.publish(code)
        return {"type": "room_done", "action": kind, "room": code}

    # -- the clock ----------------------------------------------------------------------------------
    def tick(self, code: str) -> bool:
        """End a round whose time is up and hand on the role of a host gone past the grace; True if changed.

        Any process with sockets in the room calls it a few times a second (game/web/rooms.py);
        the transaction makes sure only one of them ends each round.
        """
        return self._timer_due(self.store.r.hmget(self.rooms.key(code), *self._TIMER_FIELDS)) and self._tick(code)

    _TIMER_FIELDS = ("phase", "ends_at", "host_left")

    def tick_all(self, codes: list[str]) -> list[str]:
        """`tick` for every room a process watches, their timers read in one round trip (the ticker's
        pass, every TICK_S: one HMGET per room per pass was a round trip each); the rooms changed."""
        pipe = self.store.r.pipeline(transaction=False)
        for code in codes:
            pipe.hmget(self.rooms.key(code), *self._TIMER_FIELDS)
        return [code for code, fields in zip(codes, pipe.execute()) if self._timer_due(fields) and self._tick(code)]

    def _timer_due(self, fields) -> bool:
        phase, ends_at, host_left = fields
        now = self.rooms.now_ms()
        due = phase == b"round" and now >= int(ends_at or 0)
        gone = host_left is not None and now - int(host_left) >= self.rooms.limits.host_grace_ms
        return due or gone

    def _tick(self, code: str) -> bool:
        """(A timer is due) end the round or hand on the host role in a transaction; True if changed."""
        def change(room: Room):
            changed = False
            if room.phase == "round" and self.rooms.now_ms() >= int(room.meta["ends_at"]):
                self.rooms.end_round(room, target_info=self.target_info)
                changed = True
            left = room.meta.get("host_left")
            if left is not None and self.rooms.now_ms() - int(left) >= self.rooms.limits.host_grace_ms:
                if room.online.get(room.host, 0) > 0:
                    room.meta.pop("host_left", None)  # back already
                else:
                    self.rooms.hand_on(room)
                changed = True
            return changed

        try:
            changed = self.rooms.transact(code, change)
        except RoomError:
            return False  # expired meanwhile
        if changed:
            self.publish(code)
        return changed

    # -- what players see ---------------------------------------------------------------------------
    def state(self, code: str) -> Optional[dict]:
        """The room as every member may see it: seats, totals, who locked in; captions only in reveals."""
        room = self.rooms.read(code)
        if room is None:
            return None
        number, phase = room.number, room.phase
        players = []
        for pid in sorted(room.members, key=lambda p: room.members[p]["order"]):
            m = room.members[pid]
            entry = room.round.get(pid) or {}
            players.append({"player": m["pub"], "nickname": m["nick"], "role": m["role"],
                            "online": room.online.get(pid, 0) > 0,
                            # In the lobby every seated player plays round 1; later, late joiners wait.
                            "playing": m["role"] == "player" and int(m["from"]) <= max(number, 1),
                            "next_round": int(m["from"]), "locked": bool(entry.get("locked")) and phase == "round",
                            "total": room.totals.get(pid, 0)})
        host = room.members.get(room.host, {}).get("pub")
        out = {"type": "room", "room": code, "phase": phase, "round": number, "rounds": int(room.meta["rounds"]),
               "seconds": int(room.meta["seconds"]), "source": room.meta["source"], "game": int(room.meta["game"]),
               "ends_at": int(room.meta.get("ends_at") or 0), "now": self.rooms.now_ms(), "host": host,
               "players": players, "picture": picture_url(code, int(room.meta["game"]), number) if number else None}
        if phase in ("reveal", "over"):
            results = self.rooms.results(code)
            out["result"] = results[-1] if results else None
        if phase == "round":
            out["bars"] = self.rooms.bars(code)
        if phase == "over":
            ranked = sorted((p for p in players if p["role"] == "player"), key=lambda p: -p["total"])
            out["podium"] = [{"rank": i + 1, "player": p["player"], "nickname": p["nickname"], "total": p["total"]}
                             for i, p in enumerate(ranked)]
        return out

    def publish(self, code: str) -> None:
        state = self.state(code)
        if state is not None:
            self.store.r.publish(RoomStore.channel(code), json.dumps(state, separators=(",", ":")))

    def finished_picture(self, pid: str, code, target_id: str) -> None:
        """Refuse (ProtocolError) unless `pid` sits in room `code` and `target_id` is the picture of a round
        of its current game that is over (revealed). game/explain.py asks this before explaining a room's
        picture: a room member has seen it revealed, whether or not it was ever a daily puzzle."""
        code = self._code({"room": code})
        key = self.rooms.key(code)
        phase, number, pictures = self.store.r.hmget(key, "phase", "round", "pictures")
        if phase is None:
            raise ProtocolError("unknown_room", f"there is no room {code} (it may have expired)")
        if not self.store.r.hexists(self.rooms.key(code, "members"), pid):
            raise ProtocolError("not_in_room", "explanations of a room's rounds are for the room's players")
        done = int(number or 0) - (0 if phase in (b"reveal", b"over") else 1)
        if target_id not in json.loads(pictures or "[]")[:max(done, 0)]:
            raise ProtocolError("round_running", "that picture is not a finished round of this room: "
                                                 "explanations come with the round's reveal")

    def round_picture(self, code: str, game: int, round_no: int) -> Optional[str]:
        """The target id of a round that has begun in this game (None otherwise: no peeking ahead)."""
        try:
            code = self.rooms.normalize_code(code)
        except RoomError:
            return None
        meta = self.store.r.hmget(self.rooms.key(code), "game", "round", "pictures")
        if meta[0] is None or int(meta[0]) != game or not 1 <= round_no <= int(meta[1] or 0):
            return None
        pictures = json.loads(meta[2] or "[]")
        return pictures[round_no - 1] if round_no <= len(pictures) else None
