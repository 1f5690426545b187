"""The background generator worker: `python -m game.generation.worker` (the Procfile's `worker:`).

A long-lived process that loads its CLIP and VQGAN once and keeps them (no
fork per job: CUDA state does not survive a fork, and loading costs seconds),
then loops:
  1. claim a job from the queue (game/generation/jobs.py) -- first any job a dead worker
     left behind past the visibility timeout, else a new one -- generate it,
     commit the target idempotently, acknowledge;
  2. when there is no job, top the pool up: if fewer than POOL_TARGET fresh GAN
     targets are ready for the coming days, enqueue one generation from a prompt
     picked from assets/prompts.txt or the template combinator, with the
     GAN_MIN_SCORE threshold; a below-threshold image is logged and dropped
     (job status "rejected"). After TOPUP_PATIENCE rejections in a row, top-ups
     pause (doubling, up to TOPUP_MAX_PAUSE_S) so models that never reach the
     threshold do not keep the machine busy forever; queued jobs still run.
Top-ups go through the queue too, so they get the same retry-after-kill
guarantees and several workers never generate the same thing twice. Redis
outages are waited out with backoff; SIGTERM hands a running job back at once.

Each worker keeps a heartbeat (game/generation/heartbeats.py) with its state
and current job. The process builds its settings, judge and store itself
(game.config, game.judge, game.store), not through the web app's factory.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import redis

from game.config import generation_settings
from game.errors import AdminError
from game.generation import heartbeats
from game.generation.jobs import JobQueue, default_consumer_name
from game.generation.service import (TINY, ModelChoice, find_job_target, generate_target, job_payload, load_models,
                                     model_choice, pool_shortfall, progress_callback, step_fields,
                                     validate_prompt)

log = logging.getLogger("captionary.worker")

PROMPTS_FILE = Path(__file__).resolve().parents[2] / "assets" / "prompts.txt"
TOUCH_EVERY_S = 1.0  # heartbeat + queue touch at most this often during a job
TOPUP_LOCK = "captionary:jobs:topup-lock"
TOPUP_PATIENCE = 5  # rejections in a row before top-ups pause
TOPUP_MAX_PAUSE_S = 600.0

# The template combinator: subject x situation, in paint.wtf's spirit (concrete and a bit absurd).
SUBJECTS = ("a raccoon", "an elephant", "a penguin", "a giraffe", "a cat", "a fox", "a robot", "an owl",
            "a goat", "a snail", "a walrus", "a hedgehog", "a crocodile", "a panda", "a flamingo", "a moose")
SITUATIONS = ("driving a tractor", "on top of a house", "playing the violin", "in a bathtub",
              "riding a unicycle", "reading a newspaper", "wearing a top hat", "eating a pizza",
              "in a hot air balloon", "on the moon", "at the bottom of the sea", "painting a portrait",
              "in a snowstorm", "lifting weights", "in a teacup", "on a skateboard")


class LostJob(RuntimeError):
    """Another worker took this job over (we were too slow to report); stop working on it."""


class Stopping(RuntimeError):
    """The worker was asked to stop (SIGTERM) in the middle of a job."""


def load_prompts(path: Path | str = PROMPTS_FILE) -> list[str]:
    """The curated prompts: one per line, '#' comments and blanks ignored, each checked."""
    prompts = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if any(c in line for c in "|^:"):
                raise ValueError(f"{path}:{number}: prompt syntax characters (| ^ :) in a curated prompt")
            prompts.append(validate_prompt(line))
    return prompts


def combined_prompts() -> list[str]:
    return [f"{subject} {situation}" for subject in SUBJECTS for situation in SITUATIONS]


def pick_prompt(rng: random.Random, curated: list[str], avoid: set[str], curated_share: float = 0.5) -> str:
    """A prompt not in `avoid`: curated ones about half the time, else a template combination."""
    pools = [curated, combined_prompts()] if rng.random() < curated_share else [combined_prompts(), curated]
    for pool in pools:
        fresh = [p for p in pool if p not in avoid]
        if fresh:
            return rng.choice(fresh)
    return rng.choice(curated or combined_prompts())  # everything used: repeats are fine, seeds differ


class Worker:
    """One worker process: models loaded once, a queue consumer, a pool keeper."""

    def __init__(self, *, redis, store, scorer, config: dict, name: Optional[str] = None,
                 prompts_path: Path | str = PROMPTS_FILE, generate_fn: Callable = generate_target,
                 rng: Optional[random.Random] = None, top_up: bool = True):
        self.r = redis
        self.store = store
        self.scorer = scorer
        self.config = config
        self.cfg = generation_settings(config)
        self.name = name or default_consumer_name()
        self.queue = JobQueue(redis, max_attempts=self.cfg["JOB_MAX_ATTEMPTS"],
                              visibility_s=self.cfg["JOB_VISIBILITY_S"])
        self.prompts = load_prompts(prompts_path)
        self.generate_fn = generate_fn
        self.rng = rng or random.Random()
        self.top_up_enabled = top_up
        self.models: dict = {}  # loaded once, kept for the life of the process
        self.default_choice: Optional[ModelChoice] = None  # set by prepare()
        self.stop = threading.Event()
        self.rejected_in_a_row = 0  # top-up images below the threshold since the last accepted one
        self.topup_not_before = 0.0  # monotonic time; top-ups pause after rejections (see _after_rejection)
        self.started = time.time()
        self.processed = 0

    @classmethod
    def from_app(cls, app, **kwargs) -> "Worker":
        ext = app.extensions
        return cls(redis=ext["redis"], store=ext["store"], scorer=ext["scorer"], config=app.config, **kwargs)

    def prepare(self) -> ModelChoice:
        """Load the configured CLIP and VQGAN now (once), so a missing file is reported at start.

        In development, when the configured weights are not here, the worker
        falls back to the tiny random models, as the web app's demo mode does
        (and says so); in production it refuses to start.
        """
        choice = model_choice(self.config)
        try:
            load_models(choice, self.models, judge_clip=getattr(self.scorer, "clip", None))
        except AdminError as exc:
            if self.config.get("ENV") == "production" or not self.config.get("DEMO_FALLBACK", True):
                raise
            log.warning("DEMO MODE: generation models unavailable, using the random test-tiny models "
                        "(images and scores are not real):\n%s", exc)
            choice = ModelChoice(TINY, "random", TINY, choice.device, choice.models_dir)
            load_models(choice, self.models, judge_clip=getattr(self.scorer, "clip", None))
        self.default_choice = choice
        return choice

    def _choice_for(self, payload: dict) -> ModelChoice:
        if not any(payload.get(k) for k in ("clip_model", "clip_pretrained", "vqgan_model")):
            return self.default_choice or self.prepare()
        return model_choice(self.config, payload.get("clip_model"), payload.get("clip_pretrained"),
                                  payload.get("vqgan_model"))

    # -- heartbeat --------------------------------------------------------
    def heartbeat(self, state: str, job=None, progress: str = "") -> None:
        heartbeats.beat(self.r, self.name, {
            "name": self.name, "host": socket.gethostname(), "pid": os.getpid(), "state": state,
            "job": job.id if job else "", "progress": progress, "processed": self.processed,
            "started": self.started, "updated": time.time(), "model_id": self.store.model_id})

    def _forget_heartbeat(self) -> None:
        heartbeats.forget(self.r, self.name)
        # Each process is a new consumer name; drop ours from the group when it holds nothing
        # (deleting a consumer with pending entries would orphan them, so never then).
        from game.generation.jobs import GROUP, STREAM
        try:
            if not self.r.xpending_range(STREAM, GROUP, "-", "+", 1, consumername=self.name):
                self.r.xgroup_delconsumer(STREAM, GROUP, self.name)
        except Exception as exc:  # shutting down: a failure here must not hide the real exit reason
            log.debug("could not remove consumer %s: %s", self.name, exc)

    # -- jobs -------------------------------------------------------------
    def process_one(self, block_ms: int = 0) -> bool:
        """Claim and run one job; False when the queue had none."""
        job = self.queue.claim(self.name, block_ms=block_ms)
        if job is None:
            return False
        self.run_job(job)
        return True

    def run_job(self, job) -> None:
        payload = job.payload
        log.info("job %s (attempt %d/%d): %r", job.id, job.attempts, self.queue.max_attempts, payload.get("prompt"))
        self.heartbeat("working", job, "loading")
        existing = find_job_target(self.store, job.id, self.scorer)
        if existing:  # an earlier attempt committed before dying: just acknowledge
            self.queue.commit(job, lambda: existing, lambda: existing)
            log.info("job %s: already committed as target %s by an earlier attempt", job.id, existing)
            return
        def check(info) -> None:
            if self.stop.is_set():
                raise Stopping(f"worker {self.name} is stopping")

        def touch(info) -> None:
            fields = step_fields(info)
            progress = f"{fields['iteration']}/{fields['total'] or payload.get('iterations')}"
            if not self.queue.touch(job, self.name):
                raise LostJob(f"job {job.id} was taken over by {self.queue.owner(job)}")
            self.r.hset(f"captionary:jobs:job:{job.id}", "progress", progress)
            self.heartbeat("working", job, progress)

        on_step = progress_callback(touch, TOUCH_EVERY_S, check)
        try:
            choice = self._choice_for(payload)
            clip, vqgan = load_models(choice, self.models, judge_clip=getattr(self.scorer, "clip", None))
            min_score = payload.get("min_score")
            seeded = self.generate_fn(
                self.store, self.scorer, clip, vqgan, payload, self.cfg, on_step=on_step, min_score=min_score,
                job_id=job.id,
                commit=lambda write: self.queue.commit(job, lambda: find_job_target(self.store, job.id,
                                                                                          self.scorer), write))
        except LostJob as exc:
            log.warning("%s; leaving it to that worker", exc)
            return
        except Stopping:
            # Not the job's fault: hand it back at once (no visibility wait) and keep its attempt count.
            self.queue.release(job)
            log.info("job %s handed back unfinished: the worker is stopping", job.id)
            return
        except Exception as exc:  # any failure is recorded on the job; the worker lives on
            error = f"{type(exc).__name__}: {exc}"
            status = self.queue.fail(job, error)
            log.error("job %s attempt %d failed (%s): %s", job.id, job.attempts, status, error)
            return
        finally:
            self.processed += 1
            self.heartbeat("idle")
        if seeded.target_id is None and min_score is not None and seeded.self_score < min_score:
            note = (f"rejected: self-score {seeded.self_score:.4f} below the threshold {min_score:.4f} "
                    f"(prompt {payload['prompt']!r}, seed {seeded.seed})")
            log.info("job %s %s", job.id, note)
            self.queue.reject(job, note)
            if payload.get("source") == "topup":
                self._after_rejection()
        elif seeded.target_id is None:
            log.warning("job %s: another worker is committing it; leaving it", job.id)
        else:
            log.info("job %s: added target %s, self-score %.4f, seed %d", job.id, seeded.target_id,
                     seeded.self_score, seeded.seed)
            self.rejected_in_a_row, self.topup_not_before = 0, 0.0

    def _after_rejection(self) -> None:
        """Pause top-ups after consecutive rejections, doubling up to TOPUP_MAX_PAUSE_S.

        Models that never reach the threshold (random demo weights, a threshold
        set too high) must not keep a GPU or the CPU busy forever; queued jobs
        are still taken at once meanwhile.
        """
        self.rejected_in_a_row += 1
        if self.rejected_in_a_row >= TOPUP_PATIENCE:
            pause = min(TOPUP_MAX_PAUSE_S, self.cfg["WORKER_IDLE_S"] * 2 ** (self.rejected_in_a_row - TOPUP_PATIENCE))
            self.topup_not_before = time.monotonic() + pause
            log.warning("%d top-up images in a row scored below %.3f; pausing top-ups for %.0fs",
                        self.rejected_in_a_row, self.cfg["GAN_MIN_SCORE"], pause)

    # -- pool top-up ------------------------------------------------------
    def in_flight_topups(self) -> list:
        return [j for j in self.queue.list_jobs(limit=500)
                if j.status in ("queued", "running") and j.payload.get("source") == "topup"]

    def top_up(self) -> Optional[str]:
        """Enqueue one top-up generation if the pool is short; returns the job id or None."""
        # The lock makes "count then enqueue" atomic across workers, so two idle
        # workers do not both fill the same gap.
        token = f"{self.name}:{random.random()}"
        if not self.r.set(TOPUP_LOCK, token, nx=True, px=5000):
            return None
        try:
            in_flight = self.in_flight_topups()
            short = pool_shortfall(self.store, self.cfg, in_flight=len(in_flight))
            if short <= 0:
                return None
            avoid = {t.prompt for t in self.store.list_targets(kind="gan") if t.prompt}
            avoid |= {j.payload.get("prompt") for j in in_flight}
            prompt = pick_prompt(self.rng, self.prompts, avoid)
            payload = job_payload(prompt, size=self.cfg["GEN_SIZE"], iterations=self.cfg["GEN_ITERATIONS"],
                                        seeds=self.cfg["GEN_SEEDS"], keep=self.cfg["GEN_KEEP"],
                                        seed=self.rng.randrange(2**31), min_score=self.cfg["GAN_MIN_SCORE"],
                                        source="topup")
            job_id = self.queue.enqueue(payload)
            log.info("pool short by %d fresh GAN target(s): queued %s for %r", short, job_id, prompt)
            return job_id
        finally:
            # Release only our own lock: if it expired meanwhile, another worker may hold it now.
            self.r.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end "
                        "return 0", 1, TOPUP_LOCK, token)

    # -- main loop --------------------------------------------------------
    def run(self, once: bool = False, idle_s: Optional[float] = None) -> None:
        """Loop until stopped (SIGTERM/SIGINT); `once`: drain the queue, top up (bounded), then return."""
        idle_s = self.cfg["WORKER_IDLE_S"] if idle_s is None else idle_s
        choice = self.default_choice or self.prepare()
        log.info("worker %s started: judge %s, generating with CLIP %s/%s and VQGAN %s; pool target %d fresh "
                 "GAN targets, threshold %.3f", self.name, self.store.model_id, choice.clip_model,
                 choice.clip_pretrained, choice.vqgan_model, self.cfg["POOL_TARGET"], self.cfg["GAN_MIN_SCORE"])
        backoff = 0.0
        topups = 0
        try:
            while not self.stop.is_set():
                try:
                    self.heartbeat("idle")
                    if self.process_one():
                        backoff = 0.0
                        continue
                    # `once`: at most POOL_TARGET top-ups, so a threshold never met cannot loop forever.
                    may_top_up = self.top_up_enabled and time.monotonic() >= self.topup_not_before and \
                        not (once and topups >= self.cfg["POOL_TARGET"])
                    if may_top_up and self.top_up():
                        topups += 1
                        continue
                    if once:
                        return
                    # Block on the stream rather than sleeping: a new job starts at once.
                    self.process_one(block_ms=int(idle_s * 1000))
                    backoff = 0.0
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    # Redis restarting or unreachable: the models stay loaded; try again with backoff.
                    # A job held at that moment is retried by the queue after the visibility timeout.
                    backoff = min(30.0, backoff * 2 or 0.5)
                    log.error("Redis unavailable (%s); retrying in %.1fs", exc, backoff)
                    self.stop.wait(backoff)
        finally:
            try:
                self._forget_heartbeat()
            except redis.RedisError:
                pass  # the heartbeat expires by itself
            log.info("worker %s stopped after %d job(s)", self.name, self.processed)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m game.generation.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--name", help="consumer name (default host:pid:random)")
    parser.add_argument("--once", action="store_true", help="drain the queue, top up once, then exit")
    parser.add_argument("--no-top-up", action="store_true", help="only consume queued jobs")
    parser.add_argument("--generate", metavar="MODULE:FUNCTION",
                        help="a generation function with game.generation.service.generate_target's signature "
                             "(experiments, tests); default: game.generation.service:generate_target")
    args = parser.parse_args(argv)
    generate_fn = generate_target
    if args.generate:
        import importlib
        module, _, name = args.generate.partition(":")
        try:
            generate_fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as exc:
            print(f"worker cannot start: --generate {args.generate}: {exc}", file=sys.stderr)
            return 1
    # The worker builds what it needs itself, from the same settings the web app reads
    # (game.config.from_environment), and never imports the app factory or the web layer.
    from game import config as cfg
    from game import photos
    from game.config import ConfigError
    from game.judge import load_judge
    from game.store import Store, server
    try:
        config, instance = cfg.from_environment()
        os.makedirs(instance, exist_ok=True)
        cfg.configure_logging()
        judge = load_judge(config)
        client = server.connect(instance, config.get("REDIS_URL"))
        store = Store.from_config(client, judge.model_id, config)
    except (ConfigError, redis.RedisError) as exc:
        print(f"worker cannot start: {exc}", file=sys.stderr)
        return 1
    if config["IMPORT_STARTER_PHOTOS"]:
        photos.import_on_first_start(store, judge.scorer, log)
    try:
        worker = Worker(redis=client, store=store, scorer=judge.scorer, config=config, name=args.name,
                        top_up=not args.no_top_up, generate_fn=generate_fn)
        # SIGTERM (Procfile managers, systemd) stops at the next step; the job goes back to the queue.
        signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
        worker.prepare()
        worker.run(once=args.once)
    except AdminError as exc:
        print(f"worker cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
