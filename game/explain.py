"""Explanations for players: which words helped a caption, and where CLIP looked (engine/explain.py).

`Explainer.words(player, msg)` and `Explainer.heatmap(player, msg)` take a message
`{puzzle | target, caption}` (with `target`, optionally `room`) and return a reply dict, or raise the protocol's
ProtocolError (same codes as the game: empty_caption, caption_too_long,
bad_caption, unknown_puzzle, slow_down, busy; plus those below). No Flask here.

Who may see what (a running ranked day is a puzzle, not a lesson):
  * word contributions: on a past day (practice, reveal) for any caption; on a
    running ranked day only for a caption the player has submitted there (they
    could draft each variant anyway; this only batches what they already saw);
  * heatmaps: only for pictures of past days. A puzzle of the running day is
    refused ("running_day"), and so is a target players have not been shown
    ("pool_target": the ready pool's pictures are tomorrow's puzzles);
  * rooms: `{target, room, caption}` explains a picture of a room's finished round
    (the reveal carries its target id) for the room's members only, and only once that
    round is revealed (game/rooms.py Rooms.finished_picture: not_in_room, round_running).
    A room picture is a revealed past puzzle or a starter photo that any room shows,
    so it is not refused as a pool target; a running day's picture still is.
Both are rate-limited like submissions (the store's Redis token bucket, own key).

Where they run, and why there: beside the web process, which already holds the
model, through an `ExplainLane` (one per process): one explanation at a time, a small
queue whose overflow answers "busy" at once. On a CPU judge the compute happens in a
child process (game/explain_process.py) sharing the model's weights, at nice 19, that
the live scorer stops for the length of every live batch: explanations use only the
time the judge is idle, so typists never wait for them (bench/explain.py: typing p99
0.94-0.99x with explanations back to back, against 2.3-2.9x on a niced thread of the
web process). A GPU judge explains on the lane thread with its own Scorer over the same
model. The generator worker was the alternative: it holds no CLIP text tower, it is
busy generating, and a queue round trip would add its polling delay to every click.
Results are cached in Redis per (model, target, caption)
for a week; a cached answer is returned at once (after the rate limit).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import queue
import re
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Callable, Optional

from game.service import ProtocolError

log = logging.getLogger("captionary.explain")

_TARGET_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CACHE_TTL_S = 7 * 24 * 3600
LANE_QUEUE = 4  # explanations waiting per process; more answer "busy"
LANE_NICE = 10
LANE_TIMEOUT_S = 30.0
LIVE_YIELD_S = 0.5  # the most a heatmap waits for queued live drafts before each block
# Python hands the GIL to a waiting thread after this long (default 5 ms). The lane's Python
# between torch ops would otherwise hold up the live path's own op dispatch by up to 5 ms a
# time: bench/explain.py measured the typing p99 at 1.3-1.9x with explanations at 5 ms, 1.0x at 1 ms.
GIL_SWITCH_S = 0.001


def yield_to_live(scorer, limit_s: float = LIVE_YIELD_S) -> None:
    """Wait (at most `limit_s`) while the scorer has live drafts queued: they go first."""
    deadline = time.monotonic() + limit_s
    while scorer.stats()["queue_depth"] and time.monotonic() < deadline:
        time.sleep(0.002)


class ExplainLane:
    """Explanations for one process, off the live path, one at a time, with a small queue.

    On a CPU judge the compute runs in a child process (game/explain_process.py) at nice
    19 with one thread, over the very same weights in shared memory: its own GIL and the
    kernel's lowest CPU share, so live drafts hardly notice it (bench/explain.py). A lane
    thread hands it one job at a time and waits, and before each job waits (bounded)
    while the live scorer has drafts queued. On a GPU judge (or `isolate=False`) the lane
    thread computes itself, at nice +LANE_NICE, with a second `Scorer` over the same
    model (its own compute lock, so a 13-caption batch never makes a live draft wait for
    the live scorer's lock), yielding to queued live drafts between the image tower's
    blocks. Either way the numbers are the judge's own (tests hold both to 1e-5 of
    open_clip). `run(fn)` waits for the result; a full queue answers "busy" at once.
    """

    def __init__(self, live_scorer, *, max_queue: int = LANE_QUEUE, nice: int = LANE_NICE,
                 isolate: Optional[bool] = None):
        self.live = live_scorer
        self.clip = live_scorer.clip
        if isolate is None:
            isolate = self.clip.device.type == "cpu"
            if isolate:
                from game.explain_process import cannot_share
                reason = cannot_share(self.clip.model)
                if reason:
                    isolate = False
                    log.warning("explanations run in the web process, where they slow live scores: "
                                "the model cannot be shared with a child process (%s)", reason)
        self.isolated = bool(isolate)
        self.process = self.scorer = None
        if self.isolated:
            from game.explain_process import ExplainProcess
            self.process = ExplainProcess(self.clip, max_caption_chars=live_scorer.max_caption_chars,
                                          model_lock=live_scorer.exclusive())
            live_scorer.pause_while_live(self.process)  # explanations compute only while the judge is idle
        else:
            from game.explain_process import explanation_scorer
            self.scorer = explanation_scorer(self.clip, live_scorer.max_caption_chars, live_scorer.num_threads)
            if sys.getswitchinterval() > GIL_SWITCH_S:  # process-wide (the web app sets it too: GIL_SWITCH_MS)
                sys.setswitchinterval(GIL_SWITCH_S)
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._nice = nice
        self._thread = threading.Thread(target=self._loop, name="explain-lane", daemon=True)
        self._thread.start()

    def words(self, caption: str, image_embedding):
        """engine.explain.word_contributions on the lane (one bulk batch)."""
        if self.process is not None:
            return self.run(lambda: self.process.words(caption, image_embedding, LANE_TIMEOUT_S))
        from engine.explain import word_contributions
        return self.run(lambda: word_contributions(self.scorer, caption, image_embedding))

    def heatmap(self, caption: str, image):
        """engine.explain.relevance_map of the caption's embedding on the lane."""
        if self.process is not None:
            return self.run(lambda: self.process.heatmap(caption, image, LANE_TIMEOUT_S))
        from engine.explain import relevance_map

        def job():
            text = self.scorer.embed_texts([caption])[0]
            return relevance_map(self.clip, image, text, between=lambda: yield_to_live(self.live))
        return self.run(job)

    def run(self, fn: Callable, timeout: float = LANE_TIMEOUT_S):
        from game.explain_process import ExplainProcessError
        future: Future = Future()
        try:
            self._queue.put_nowait((fn, future))
        except queue.Full:
            raise ProtocolError("busy", "the judge is busy explaining other captions; try again in a moment") \
                from None
        try:
            return future.result(timeout=timeout)
        except (FuturesTimeout, ExplainProcessError) as exc:
            future.cancel()  # if it has not started, it never will
            if isinstance(exc, ExplainProcessError):
                log.error("explanation failed: %s", exc)
            raise ProtocolError("busy", "the judge is too busy to explain that right now; try again later") \
                from None

    def close(self) -> None:
        """Stop the explanation process or the lane's scorer (tests, benchmarks; a server just exits)."""
        if self.process is not None:
            self.live.stop_pausing(self.process)
            self.process.close()
        if self.scorer is not None:
            self.scorer.close()

    def _loop(self) -> None:
        try:  # Linux: a thread is a task, so this lowers this thread alone
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
        except (AttributeError, OSError) as exc:
            log.info("explain lane runs at normal priority (%s)", exc)
        while True:
            fn, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            yield_to_live(self.live)
            try:
                future.set_result(fn())
            except BaseException as exc:  # the caller gets it; the lane lives on
                future.set_exception(exc)


_lanes: dict[int, ExplainLane] = {}
_lanes_lock = threading.Lock()


def lane_for(live_scorer) -> ExplainLane:
    """The process's lane for a live scorer (the judge is loaded once per process; so is its lane)."""
    with _lanes_lock:
        lane = _lanes.get(id(live_scorer))
        if lane is None or lane.live is not live_scorer:
            lane = _lanes[id(live_scorer)] = ExplainLane(live_scorer)
        return lane


class Explainer:
    """Word contributions and heatmaps for the game's puzzles, cached, rate-limited, priority-aware."""

    def __init__(self, game, *, rate=(2.0, 10), lane: Optional[ExplainLane] = None, rooms=None):
        self.game, self.store, self.rooms = game, game.store, rooms
        self.rate = rate
        self.lane = lane or lane_for(game.scorer)

    # -- actions ---------------------------------------------------------------------------------
    def words(self, player_id: str, msg: dict) -> dict:
        where, target_id, ranked, running = self._where(player_id, msg)
        if running and not ranked:
            raise ProtocolError("running_day", "that picture is a puzzle of the running day again; explain "
                                               "your captions on today's puzzle instead")
        caption = self.game.caption(msg["caption"])
        if ranked and caption not in {a.caption for a in self.store.attempts(player_id, where["puzzle"])}:
            raise ProtocolError("not_submitted", "while the day runs, word contributions are only for captions "
                                                 "you have submitted on this puzzle")
        self._take_token(player_id)
        caption = self.game.tokens(caption)
        key = self._cache_key("words", target_id, caption)
        cached = self._cached(key)
        if cached is None:
            from engine.scorer import CaptionError
            try:
                cached = self.lane.words(caption, self.game.embedding(target_id)).as_dict()
            except CaptionError as exc:
                raise ProtocolError("bad_caption", str(exc)) from None
            self._remember(key, cached)
        return {"type": "words", **where, **cached}

    def heatmap(self, player_id: str, msg: dict) -> dict:
        where, target_id, ranked, running = self._where(player_id, msg)
        if ranked or running:
            raise ProtocolError("running_day", "where CLIP looked is shown once the day is over; on a running "
                                               "day it would turn the puzzle into a search")
        caption = self.game.caption(msg["caption"])
        self._take_token(player_id)
        caption = self.game.tokens(caption)
        key = self._cache_key("heatmap", target_id, caption)
        cached = self._cached(key)
        if cached is None:
            cached = self._heatmap(target_id, caption)
            self._remember(key, cached)
        return {"type": "heatmap", **where, "caption": caption, **cached}

    # -- helpers ---------------------------------------------------------------------------------
    def _where(self, player_id: str, msg: dict) -> tuple[dict, str, bool, bool]:
        """({puzzle: id} | {target: id}, target id, ranked puzzle?, picture on the running day?)."""
        if "puzzle" in msg:
            puzzle, ranked = self.game.puzzle(msg["puzzle"])
            # A past puzzle's picture may be back on the running day: then it is that day's puzzle.
            return {"puzzle": puzzle.id}, puzzle.target_id, ranked, ranked or self._running(puzzle.target_id)
        target_id = msg["target"]
        if not _TARGET_ID.match(target_id) or self.store.get_target(target_id) is None:
            raise ProtocolError("not_found", f"no target {target_id[:64]!r}")
        if "room" in msg:
            if self.rooms is None:
                raise ProtocolError("unknown_room", "rooms are not served here")
            self.rooms.finished_picture(player_id, msg["room"], target_id)
        if self._running(target_id):
            raise ProtocolError("running_day", "that picture is a puzzle of the running day; explanations "
                                               "of it wait until the day is over")
        if "room" not in msg and not self.game.image_is_public(target_id):
            raise ProtocolError("pool_target", "that picture has not been a puzzle yet, so it cannot be explained")
        return {"target": target_id}, target_id, False, False

    def _running(self, target_id: str) -> bool:
        return target_id in {p.target_id for p in self.store.puzzles_for(self.store.today())}

    def _take_token(self, player_id: str) -> None:
        if not self.store.take_token(f"explains:{player_id}", *self.rate):
            raise ProtocolError("slow_down", "slow down: wait a moment between explanations")

    def _heatmap(self, target_id: str, caption: str) -> dict:
        from PIL import Image
        image = Image.open(io.BytesIO(self.store.target_image(target_id)))
        heat = self.lane.heatmap(caption, image)
        log.info("heatmap %s in %.0f ms", target_id, heat.ms)
        return heat.as_dict()

    def _cache_key(self, kind: str, target_id: str, caption: str) -> str:
        digest = hashlib.sha256(caption.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"cap:m:{self.store.model_id}:explain:{kind}:{target_id}:{digest}"

    def _cached(self, key: str) -> Optional[dict]:
        raw = self.store.r.get(key)
        return json.loads(raw) if raw else None

    def _remember(self, key: str, value: dict) -> None:
        self.store.r.set(key, json.dumps(value), ex=CACHE_TTL_S)
