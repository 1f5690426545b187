"""Targets and puzzle days in Redis: the half of `Store` that manages images and schedules.

Images are shared by every CLIP model; embeddings, self-scores and hints are
stored per model id (`cap:m:{mid}:emb:{tid}`), and a target is in a model's
pool ("ready") once it has that model's embedding. A puzzle day stores a
*snapshot* of what each puzzle showed (kind, title, prompt, self-score, hint),
frozen with SET NX so all processes agree and so removing a target later never
changes a past day's puzzles, boards or reveal (its image is kept, too).
See game/store/__init__.py for the full key layout.
"""
from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Optional

import numpy as np

from engine.embeddings import embedding_from_bytes, embedding_to_bytes
from engine.images import has_png_metadata, strip_png_metadata
from game import puzzles as pz

KINDS = ("gan", "photo")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RECENT_DAYS = 3  # targets shown in the last few days are skipped while the pool allows it


@dataclass(frozen=True)
class Target:
    id: str
    kind: str  # "gan" | "photo"
    status: str  # for this store's model: "ready" (in the pool), "pending" (no embedding yet), "removed"
    created: float
    title: Optional[str] = None
    attribution: Optional[str] = None
    prompt: Optional[str] = None  # GAN: the secret prompt (shown only in reveals)
    self_score: Optional[float] = None  # GAN: cosine of its own prompt, under this model
    seed: Optional[int] = None
    settings: Optional[dict] = None
    reference_caption: Optional[str] = None
    hint_word: Optional[str] = None
    hint_score: Optional[float] = None
    history: Optional[list] = None
    has_embedding: bool = False
    sha256: str = ""
    model_id: str = ""


@dataclass(frozen=True)
class Puzzle:
    id: str  # "YYYY-MM-DD/n", n from 1
    date: str
    index: int
    target_id: str
    kind: str
    title: Optional[str] = None
    attribution: Optional[str] = None
    hint_word: Optional[str] = None
    hint_score: Optional[float] = None
    frozen: bool = True  # False: a preview (future day, or a pool still smaller than a day's set)


def _s(value) -> Optional[str]:
    return value.decode() if isinstance(value, bytes) else value


def _opt_float(value) -> Optional[float]:
    return None if value in (None, b"", "") else float(value)


def embedding_bytes(vec) -> bytes:
    arr = np.asarray(vec, dtype=np.float32).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError("an embedding must be a non-empty vector of finite numbers")
    norm = float(np.linalg.norm(arr))
    if norm == 0:
        raise ValueError("an embedding must not be all zeros")
    return embedding_to_bytes(arr / norm)  # stored L2-normalised, in the engine's one byte format


class TargetsMixin:
    """Targets, embeddings, hints and puzzle days. Mixed into `game.store.Store`."""

    # ----- targets -----
    def add_target(self, kind: str, image_png: bytes, embedding, *, prompt=None, self_score=None, seed=None,
                   settings: Optional[dict] = None, title=None, attribution=None, reference_caption=None,
                   hint_word=None, hint_score=None, history=None) -> str:
        """Store a new target with this model's embedding; returns its id. It joins the pool at once."""
        if kind not in KINDS:
            raise ValueError(f"a target's kind is one of {', '.join(KINDS)}, not {kind!r}")
        if not isinstance(image_png, (bytes, bytearray)) or not bytes(image_png).startswith(PNG_SIGNATURE):
            raise ValueError("target images are stored as PNG bytes (normalise them with game.photos first)")
        if kind == "gan" and not prompt:
            raise ValueError("a GAN target needs the prompt it was generated from")
        # Served to players as stored: the engine's text chunks hold the secret prompt and seed
        # (kept here in the hash instead), and a photo's EXIF may hold a place or a name.
        try:
            image_png = strip_png_metadata(bytes(image_png))
        except ValueError as exc:
            raise ValueError(f"the target image is not a valid PNG: {exc}") from None
        sha = hashlib.sha256(image_png).hexdigest()
        existing = self.find_by_sha(sha)
        if existing is not None:
            raise ValueError(f"this image is already target {existing}")
        emb = embedding_bytes(embedding)
        target_id = "t" + secrets.token_hex(6)
        fields = {"id": target_id, "kind": kind, "status": "active", "created": f"{self.now():.3f}",
                  "sha256": sha, "prompt": prompt, "seed": None if seed is None else int(seed),
                  "settings": None if settings is None else json.dumps(settings, sort_keys=True),
                  "title": title, "attribution": attribution, "reference_caption": reference_caption,
                  "history": None if history is None else json.dumps(history)}
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(f"cap:target:{target_id}", mapping={k: v for k, v in fields.items() if v is not None})
        pipe.set(f"cap:target:{target_id}:image", bytes(image_png))
        pipe.zadd("cap:targets", {target_id: self.now()})
        pipe.hset("cap:targets:sha", sha, target_id)
        pipe.execute()
        self.set_embedding(target_id, emb, self_score=self_score, hint_word=hint_word, hint_score=hint_score)
        return target_id

    def set_embedding(self, target_id: str, embedding, *, self_score=None, hint_word=None, hint_score=None) -> None:
        """Store this model's embedding (and self-score/hint) for a target; it joins this model's pool."""
        status = self.r.hget(f"cap:target:{target_id}", "status")
        if status is None:
            raise KeyError(f"no target {target_id!r}")
        emb = embedding if isinstance(embedding, bytes) else embedding_bytes(embedding)
        dim = len(emb) // 4
        if hint_word is None:  # the vocabulary cached for this model gives a hint without CLIP
            from game import hints
            try:
                hint = hints.cached_hint(self, np.frombuffer(emb, dtype="<f4"))
            except ValueError:  # a cached vocabulary of another dimension: no hint rather than no target
                hint = None
            if hint is not None:
                hint_word, hint_score = hint
        known_dim = self.r.get(self._m + "dim")
        if known_dim is not None and int(known_dim) != dim:
            raise ValueError(f"embedding has {dim} dimensions; model {self.model_id} uses {int(known_dim)}")
        fields = {"embedding": emb, "dim": dim, "self_score": None if self_score is None else repr(float(self_score)),
                  "hint_word": hint_word, "hint_score": None if hint_score is None else repr(float(hint_score))}
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self._m + "dim", dim)
        pipe.hset(self._m + f"emb:{target_id}", mapping={k: v for k, v in fields.items() if v is not None})
        if status == b"active":
            pipe.sadd(self._m + "ready", target_id)
        pipe.execute()

    def set_hint(self, target_id: str, word: str, score: float) -> None:
        if not self.r.exists(self._m + f"emb:{target_id}"):
            raise KeyError(f"target {target_id!r} has no embedding for {self.model_id}")
        self.r.hset(self._m + f"emb:{target_id}", mapping={"hint_word": word, "hint_score": repr(float(score))})

    def find_by_sha(self, sha256: str) -> Optional[str]:
        """The active target with this image (sha256 of its PNG), if any."""
        tid = self.r.hget("cap:targets:sha", sha256)
        if tid is None:
            return None
        tid = tid.decode()
        return tid if self.r.hget(f"cap:target:{tid}", "status") == b"active" else None

    def target_by_sha(self, sha256: str) -> Optional[str]:
        """Any target ever added with this image, removed ones included (imports must not revive them)."""
        tid = self.r.hget("cap:targets:sha", sha256)
        return tid.decode() if tid is not None else None

    def get_target(self, target_id: str) -> Optional[Target]:
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(f"cap:target:{target_id}")
        pipe.hmget(self._m + f"emb:{target_id}", ["dim", "self_score", "hint_word", "hint_score"])
        raw, (dim, self_score, hint_word, hint_score) = pipe.execute()
        if not raw:
            return None
        f = {k.decode(): v.decode() for k, v in raw.items()}
        has_emb = dim is not None
        status = "removed" if f.get("status") == "removed" else ("ready" if has_emb else "pending")
        return Target(id=target_id, kind=f["kind"], status=status, created=float(f["created"]),
                      title=f.get("title"), attribution=f.get("attribution"), prompt=f.get("prompt"),
                      self_score=_opt_float(self_score), seed=int(f["seed"]) if "seed" in f else None,
                      settings=json.loads(f["settings"]) if "settings" in f else None,
                      reference_caption=f.get("reference_caption"), hint_word=_s(hint_word),
                      hint_score=_opt_float(hint_score),
                      history=json.loads(f["history"]) if "history" in f else None,
                      has_embedding=has_emb, sha256=f.get("sha256", ""), model_id=self.model_id)

    def target_image(self, target_id: str) -> bytes:
        """The target's PNG (kept after removal, so past puzzles still show it)."""
        data = self.r.get(f"cap:target:{target_id}:image")
        if data is None:
            raise KeyError(f"no image for target {target_id!r}")
        return data

    def public_target_image(self, target_id: str) -> bytes:
        """The PNG players may download: never any metadata. Images stored before targets were
        cleaned on the way in are cleaned here once, and the clean bytes replace them."""
        data = self.target_image(target_id)
        if has_png_metadata(data):
            data = strip_png_metadata(data)
            self.r.set(f"cap:target:{target_id}:image", data, xx=True)
        return data

    def target_embedding(self, target_id: str) -> np.ndarray:
        """This model's L2-normalised float32 embedding of the target."""
        data = self.r.hget(self._m + f"emb:{target_id}", "embedding")
        if data is None:
            raise KeyError(f"target {target_id!r} has no embedding for {self.model_id}")
        return embedding_from_bytes(data)

    def list_targets(self, kind=None, status=None, min_score=None) -> list[Target]:
        """Targets, newest first; filters: kind, status (ready/pending/removed), self_score >= min_score."""
        ids = [t.decode() for t in self.r.zrevrange("cap:targets", 0, -1)]
        out = []
        for target_id in ids:
            target = self.get_target(target_id)
            if target is None:
                continue
            if kind is not None and target.kind != kind:
                continue
            if status is not None and target.status != status:
                continue
            if min_score is not None and (target.self_score is None or target.self_score < min_score):
                continue
            out.append(target)
        return out

    def pool(self) -> dict[str, str]:
        """This model's ready pool: target id -> kind."""
        ids = sorted(t.decode() for t in self.r.smembers(self._m + "ready"))
        pipe = self.r.pipeline(transaction=False)
        for target_id in ids:
            pipe.hget(f"cap:target:{target_id}", "kind")
        return {t: k.decode() for t, k in zip(ids, pipe.execute()) if k is not None}

    def remove_target(self, target_id: str) -> list[str]:
        """Take a target out of every model's pool. Past and running days keep it (snapshots,
        image and boards untouched); frozen future days that used it are un-frozen so they are
        chosen again. Returns those dates."""
        if not self.r.exists(f"cap:target:{target_id}"):
            raise KeyError(f"no target {target_id!r}")
        self.r.hset(f"cap:target:{target_id}", "status", "removed")
        today = self.today()
        cleared = []
        for mid in sorted(m.decode() for m in self.r.smembers("cap:models")):
            base = f"cap:m:{mid}:"
            self.r.srem(base + "ready", target_id)
            for date in (d.decode() for d in self.r.zrange(base + "days", 0, -1)):
                if date <= today:
                    continue
                raw = self.r.get(base + f"day:{date}")
                if raw and any(s["target_id"] == target_id for s in json.loads(raw)["puzzles"]) \
                        and not self.r.exists(base + f"day:{date}:seq"):
                    self.r.delete(base + f"day:{date}")
                    self.r.zrem(base + "days", date)
                    cleared.append(date)
        return cleared

    # ----- puzzle days -----
    def _snapshot_of(self, target_id: str) -> dict:
        t = self.get_target(target_id)
        return {"target_id": t.id, "kind": t.kind, "title": t.title, "attribution": t.attribution,
                "prompt": t.prompt, "self_score": t.self_score, "reference_caption": t.reference_caption,
                "hint_word": t.hint_word, "hint_score": t.hint_score}

    def _puzzles(self, date: str, snaps: list[dict], frozen: bool) -> list[Puzzle]:
        return [Puzzle(id=pz.puzzle_id(date, i + 1), date=date, index=i + 1, target_id=s["target_id"],
                       kind=s["kind"], title=s.get("title"), attribution=s.get("attribution"),
                       hint_word=s.get("hint_word"), hint_score=s.get("hint_score"), frozen=frozen)
                for i, s in enumerate(snaps)]

    def _frozen(self, date: str) -> Optional[list[dict]]:
        raw = self.r.get(self._m + f"day:{date}")
        return json.loads(raw)["puzzles"] if raw else None

    def _choose(self, date: str) -> list[str]:
        recent = []
        for back in range(1, RECENT_DAYS + 1):
            recent += [s["target_id"] for s in self._frozen(pz.add_days(date, -back)) or []]
        return pz.choose_targets(self.pool(), date, self.model_id, self.puzzles_per_day, recent)

    def _freeze(self, date: str, snaps: list[dict], *, overwrite: bool, scheduled: bool) -> None:
        value = json.dumps({"puzzles": snaps, "frozen_ms": int(self.now() * 1000), "scheduled": scheduled})
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self._m + f"day:{date}", value, nx=not overwrite)
        pipe.zadd(self._m + "days", {date: pz.ordinal(date)})
        pipe.execute()

    def puzzles_for(self, date) -> list[Puzzle]:
        """The day's puzzles, for players: only real puzzle days have any.

        A frozen day gives its snapshot. Today's set is frozen on first computation
        (SET NX: every process gets the same set) once the pool fills a day; a pool
        too small gives an unfrozen preview of today until the first submission.
        Any other day that was never frozen (a past day nobody played, a future
        day) has no puzzles: browsing dates never reveals the pool, and never writes.
        Admins look ahead with `preview_day`."""
        date = pz.parse_date(date)
        snaps = self._frozen(date)
        if snaps is not None:
            return self._puzzles(date, snaps, True)
        if self.day_state(date) != "today":
            return []
        ids = self._choose(date)
        if not ids:
            return []
        if len(ids) < self.puzzles_per_day:
            return self._puzzles(date, [self._snapshot_of(t) for t in ids], False)
        self._freeze(date, [self._snapshot_of(t) for t in ids], overwrite=False, scheduled=False)
        return self._puzzles(date, self._frozen(date), True)

    def preview_day(self, date) -> list[Puzzle]:
        """Admins only: a day's puzzles as frozen, or as they would be chosen from today's pool
        (unfrozen) for a day not frozen yet. Writes nothing, not even for today."""
        date = pz.parse_date(date)
        snaps = self._frozen(date)
        if snaps is not None:
            return self._puzzles(date, snaps, True)
        return self._puzzles(date, [self._snapshot_of(t) for t in self._choose(date)], False)

    def shown_target_ids(self) -> set[str]:
        """Targets players have been shown: today's puzzles and every earlier frozen day's.
        Only these images are served publicly; the rest of the pool stays unseen until its day."""
        today = self.today()
        days = [d.decode() for d in self.r.zrangebyscore(self._m + "days", "-inf", pz.ordinal(today))]
        shown = {p.target_id for p in self.puzzles_for(today)}
        for raw in (self.r.mget([self._m + f"day:{d}" for d in days if d < today]) if days else []):
            if raw:
                shown.update(s["target_id"] for s in json.loads(raw)["puzzles"])
        return shown

    def freeze_day(self, date) -> list[Puzzle]:
        """Freeze today's set now, even from a small pool (a submission needs fixed puzzles)."""
        date = pz.parse_date(date)
        if self._frozen(date) is None and self.day_state(date) == "today":
            ids = self._choose(date)
            if ids:
                self._freeze(date, [self._snapshot_of(t) for t in ids], overwrite=False, scheduled=False)
        return self.puzzles_for(date)

    def schedule(self, date, target_ids: list[str]) -> list[Puzzle]:
        """Set a day's puzzles explicitly. Refuses past days and days that already have submissions."""
        date = pz.parse_date(date)
        if self.day_state(date) == "past":
            raise ValueError(f"cannot schedule {date}: the day is over (today is {self.today()} UTC)")
        if self.r.exists(self._m + f"day:{date}:seq"):
            raise ValueError(f"cannot schedule {date}: players have already submitted on that day")
        ids = list(target_ids)
        if not 1 <= len(ids) <= 16:
            raise ValueError("a day needs between 1 and 16 puzzles")
        if len(set(ids)) != len(ids):
            raise ValueError("a target can appear only once per day")
        ready = self.pool()
        for target_id in ids:
            if target_id not in ready:
                why = "unknown" if not self.r.exists(f"cap:target:{target_id}") else "not in the pool of " + self.model_id
                raise ValueError(f"target {target_id!r} is {why}")
        self._freeze(date, [self._snapshot_of(t) for t in ids], overwrite=True, scheduled=True)
        return self.puzzles_for(date)

    def get_puzzle(self, puzzle_id: str) -> Optional[Puzzle]:
        """The puzzle with this id, or None (ValueError for a malformed id)."""
        date, index = pz.parse_puzzle_id(puzzle_id)
        puzzles = self.puzzles_for(date)
        return puzzles[index - 1] if index <= len(puzzles) else None

    def _snapshot(self, puzzle: Puzzle) -> dict:
        snaps = self._frozen(puzzle.date)
        if snaps is not None and puzzle.index <= len(snaps):
            return snaps[puzzle.index - 1]
        return self._snapshot_of(puzzle.target_id)

    def days(self) -> list[str]:
        """Frozen puzzle days of this model, oldest first (the archive)."""
        return [d.decode() for d in self.r.zrange(self._m + "days", 0, -1)]

    # ----- hint vocabulary cache -----
    def vocab_embeddings(self, words_sha: str) -> Optional[np.ndarray]:
        """Cached vocabulary embeddings for this model (None if absent or for another word list)."""
        sha, dim, data = self.r.hmget(self._m + "vocab", ["sha", "dim", "matrix"])
        if sha is None or sha.decode() != words_sha or data is None:
            return None
        return np.frombuffer(data, dtype="<f4").reshape(-1, int(dim)).astype(np.float32)

    def save_vocab_embeddings(self, words_sha: str, matrix: np.ndarray) -> None:
        matrix = np.asarray(matrix, dtype="<f4")
        self.r.hset(self._m + "vocab", mapping={"sha": words_sha, "dim": matrix.shape[1], "matrix": matrix.tobytes()})
