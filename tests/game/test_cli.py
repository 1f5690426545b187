"""The admin CLI through Flask's CLI runner: targets, puzzles, jobs, with tiny models and real Redis."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from harness.settings import SETTINGS
from tests.helpers.images import png_bytes

TINY = ["--clip-model", "test-tiny", "--vqgan-model", "test-tiny"]
GEN = ["--size", "32", "--iterations", "4", "--seeds", "1", "--cutn", "4"]


@pytest.fixture
def app(redis_client, redis_url, clock, tmp_path):
    from game import create_app
    app = create_app(dict(SETTINGS, TESTING=True, REDIS_URL=redis_url, VQGAN_MODEL="test-tiny",
                          MODELS_DIR=str(tmp_path / "models"), CLOCK=clock,
                          GEN_SIZE=32, GEN_ITERATIONS=4, GEN_SEEDS=1, GEN_CUTN=4))
    return app


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def invoke(*args, input=None):
        return runner.invoke(args=list(args), input=input, catch_exceptions=False)
    return invoke


@pytest.fixture
def store(app):
    return app.extensions["store"]


def _add(store, scorer, color, kind="photo", **kw):
    img = Image.open(io.BytesIO(png_bytes(color)))
    if kind == "gan":
        kw.setdefault("prompt", f"prompt {color}")
    return store.add_target(kind, png_bytes(color), scorer.embed_image(img), **kw)


def _failed(result, *fragments):
    assert result.exit_code == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    return True


# -- targets seed -----------------------------------------------------------

def test_seed_generates_and_adds_a_gan_target(cli, store):
    result = cli("targets", "seed", "a raccoon driving a tractor", *TINY, *GEN, "--seed", "7")
    assert result.exit_code == 0, result.output
    assert "added target t" in result.output and "self-score" in result.output
    assert "random weights" in result.output  # the non-pretrained warning (stderr is mixed in)
    [target] = store.list_targets(kind="gan")
    assert target.prompt == "a raccoon driving a tractor" and target.seed == 7 and target.status == "ready"
    assert target.id in result.output and f"{target.self_score:.4f}" in result.output
    assert target.settings["size"] == 32 and target.settings["iterations"] == 4
    assert target.settings["clip_model"] == "test-tiny/random" and target.settings["vqgan_model"] == "test-tiny/random"
    assert target.history and target.history[-1][0] == 4
    assert Image.open(io.BytesIO(store.target_image(target.id))).size == (32, 32)


def test_seed_uses_configured_models_by_default(cli, store):
    # The fixture's config names test-tiny for both, so no model options are needed.
    result = cli("targets", "seed", "an elephant on top of a house", *GEN)
    assert result.exit_code == 0, result.output
    assert len(store.list_targets(kind="gan")) == 1


def test_seed_best_of_n_with_init_image(cli, store, tmp_path):
    init = tmp_path / "init.png"
    init.write_bytes(png_bytes((10, 200, 10), (40, 40)))
    result = cli("targets", "seed", "a green field", *TINY, "--size", "32", "--iterations", "4", "--seeds", "2",
                 "--keep", "1", "--cutn", "4", "--init-image", str(init))
    assert result.exit_code == 0, result.output
    [target] = store.list_targets(kind="gan")
    assert target.settings["seeds"] == 2 and target.settings["init_image"] == "init.png"


@pytest.mark.parametrize("args, message", [
    (["   "], "prompt is empty"),
    (["x" * 201], "200"),
    (["a cat", "--size", "40"], "multiple of 16"),
    (["a cat", "--size", "0"], "--size"),
    (["a cat", "--iterations", "0"], "--iterations"),
    (["a cat", "--seeds", "1", "--keep", "2"], "--keep"),
    (["a cat", "--clip-model", "no-such-clip", "--vqgan-model", "test-tiny"], "unknown CLIP model"),
    (["a cat", "--clip-model", "test-tiny", "--vqgan-model", "no-such-vqgan"], "unknown VQGAN"),
    (["a:b:c:d", *TINY], "prompt"),
    (["a cat:heavy", *TINY], "weight"),
    (["a cat", "--init-image", "/no/such/file.png"], "no such file"),
])
def test_seed_bad_input_is_a_clear_error_and_adds_nothing(cli, store, args, message):
    result = cli("targets", "seed", args[0], *GEN, *args[1:])  # the last occurrence of an option wins
    assert _failed(result, "Error:", message)
    assert store.list_targets() == []


def test_seed_with_a_non_image_init_file(cli, store, tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("not an image")
    assert _failed(cli("targets", "seed", "a cat", *TINY, *GEN, "--init-image", str(bogus)), "init image", "not an image")
    assert store.list_targets() == []


def test_seed_with_missing_weights_says_where_to_put_them(cli, store, tmp_path, monkeypatch):
    monkeypatch.delenv("CAPTIONARY_CLIP_WEIGHTS", raising=False)
    result = cli("targets", "seed", "a cat", *GEN, "--clip-model", "ViT-B-32", "--clip-pretrained", "openai")
    assert _failed(result, "not on this machine", "models download clip-vit-b-32-openai",
                   str(tmp_path / "models"))
    result = cli("targets", "seed", "a cat", *GEN, "--clip-model", "test-tiny",
                 "--vqgan-model", "vqgan_imagenet_f16_16384")
    assert _failed(result, "not on this machine")
    assert store.list_targets() == []


def test_seed_min_score_rejects_and_adds_nothing(cli, store):
    result = cli("targets", "seed", "a cat", *TINY, *GEN, "--min-score", "0.99")
    assert _failed(result, "below --min-score")
    assert store.list_targets() == []


def test_seed_queue_enqueues_a_job_instead(cli, store, app):
    from game.generation.jobs import JobQueue
    result = cli("targets", "seed", "a fox reading a newspaper", *TINY, *GEN, "--queue")
    assert result.exit_code == 0, result.output
    [job] = JobQueue(app.extensions["redis"]).list_jobs()
    assert job.id in result.output and job.status == "queued"
    assert job.payload["prompt"] == "a fox reading a newspaper" and job.payload["clip_model"] == "test-tiny"
    assert isinstance(job.payload["seed"], int)  # chosen at enqueue time: retries reproduce the image
    assert store.list_targets() == []
    jobs = cli("targets", "jobs")
    assert job.id in jobs.output and "queued" in jobs.output and "a fox reading" in jobs.output
    assert _failed(cli("targets", "seed", "a fox", "--clip-model", "nope", "--queue"), "unknown CLIP model")


# -- list / show / remove -----------------------------------------------------

def test_list_filters_and_show(cli, store, app):
    scorer = app.extensions["scorer"]
    gan = _add(store, scorer, (1, 2, 3), kind="gan", prompt="a giraffe in a phone booth", self_score=0.5, seed=3,
               settings={"size": 32}, history=[[0, 0.1], [4, 0.5]])
    low = _add(store, scorer, (9, 9, 9), kind="gan", prompt="a lighthouse", self_score=0.1, seed=4)
    photo = _add(store, scorer, (200, 0, 0), title="Red square")
    out = cli("targets", "list").output
    assert all(t in out for t in (gan, low, photo)) and "3 target(s)" in out
    out = cli("targets", "list", "--kind", "gan", "--min-score", "0.4").output
    assert gan in out and low not in out and photo not in out
    out = cli("targets", "list", "--kind", "photo").output
    assert photo in out and "Red square" in out and gan not in out
    assert "no targets match" in cli("targets", "list", "--status", "removed").output
    shown = cli("targets", "show", gan)
    assert shown.exit_code == 0
    assert "a giraffe in a phone booth" in shown.output and "0.5000" in shown.output and "size" in shown.output
    assert "0:0.100, 4:0.500" in shown.output
    assert _failed(cli("targets", "show", "tnope"), "no target with id")
    assert cli("targets", "list", "--kind", "dragon").exit_code == 2  # click's usage error


def test_remove_asks_then_removes(cli, store, app):
    tid = _add(store, app.extensions["scorer"], (5, 5, 5))
    assert _failed(cli("targets", "remove", tid, input="n\n"), "not removed")
    assert store.get_target(tid).status == "ready"
    result = cli("targets", "remove", tid, input="y\n")
    assert result.exit_code == 0 and f"removed target {tid}" in result.output
    assert store.get_target(tid).status == "removed"
    tid2 = _add(store, app.extensions["scorer"], (6, 6, 6))
    assert cli("targets", "remove", tid2, "--yes").exit_code == 0
    assert _failed(cli("targets", "remove", "tmissing", "--yes"), "no target with id")


def test_remove_keeps_past_days_boards(cli, store, app, clock):
    scorer = app.extensions["scorer"]
    ids = [_add(store, scorer, (i, 1, 1)) for i in range(3)]
    today = store.today()
    puzzles = store.puzzles_for(today)
    from game.players import new_player_id
    store.submit(new_player_id(), puzzles[0].id, "a caption", 0.3)
    clock.advance(days=1)
    assert cli("targets", "remove", puzzles[0].target_id, "--yes").exit_code == 0
    assert [p.target_id for p in store.puzzles_for(today)] == [p.target_id for p in puzzles]
    assert store.leaderboard(puzzles[0].id)[0].score == pytest.approx(0.3)
    assert set(ids) >= {p.target_id for p in puzzles}


# -- schedule / puzzles show ------------------------------------------------------

def test_schedule_and_puzzles_show(cli, store, app):
    scorer = app.extensions["scorer"]
    a = _add(store, scorer, (10, 0, 0), kind="gan", prompt="a whale in the clouds", self_score=0.42)
    b = _add(store, scorer, (20, 0, 0), title="Blue photo")
    tomorrow = "2026-06-16"
    result = cli("targets", "schedule", tomorrow, b, a)
    assert result.exit_code == 0, result.output
    assert f"{tomorrow}/1  target {b}" in result.output and f"{tomorrow}/2  target {a}" in result.output
    shown = cli("puzzles", "show", tomorrow)
    assert shown.exit_code == 0
    assert f"{tomorrow}/2" in shown.output and "a whale in the clouds" in shown.output and "0.4200" in shown.output
    today = cli("puzzles", "show")
    assert "puzzles for 2026-06-15" in today.output


def test_schedule_errors(cli, store, app):
    tid = _add(store, app.extensions["scorer"], (30, 0, 0))
    assert _failed(cli("targets", "schedule", "2026-06-14", tid), "in the past")
    assert _failed(cli("targets", "schedule", "next tuesday", tid), "not a date")
    assert _failed(cli("targets", "schedule", "2026-06-20", "tnope"), "no target with id")
    assert _failed(cli("targets", "schedule", "2026-06-20", tid, tid), "only once")
    store.remove_target(tid)
    assert _failed(cli("targets", "schedule", "2026-06-20", tid), "removed")
    assert _failed(cli("puzzles", "show", "2026-13-01"), "not a date")


def test_puzzles_show_on_an_empty_pool(cli):
    result = cli("puzzles", "show")
    assert result.exit_code == 0 and "no puzzles" in result.output


# -- jobs ---------------------------------------------------------------------------

def test_jobs_lists_failed_jobs_with_their_errors(cli, app):
    from game.generation.jobs import JobQueue
    queue = JobQueue(app.extensions["redis"], max_attempts=1)
    queue.enqueue({"prompt": "a doomed prompt", "source": "admin"})
    job = queue.claim("w1")
    queue.fail(job, "ValueError: size must be a multiple of 16")
    out = cli("targets", "jobs").output
    assert "failed" in out and "size must be a multiple of 16" in out and "a doomed prompt" in out
    assert "no jobs" in cli("targets", "jobs", "--status", "queued").output


# -- add-photo --------------------------------------------------------------------

def _photo(path, color, size=(64, 48), fmt="PNG"):
    Image.new("RGB", size, color).save(path, fmt)
    return str(path)


def test_add_photo_adds_all_with_caption(cli, store, tmp_path):
    a = _photo(tmp_path / "a.png", (250, 10, 10))
    b = _photo(tmp_path / "b.jpg", (10, 10, 250), fmt="JPEG")
    result = cli("targets", "add-photo", a, b, "--caption", "a red square", "--title", "Squares")
    assert result.exit_code == 0, result.output
    photos = store.list_targets(kind="photo")
    assert len(photos) == 2 and all(p.status == "ready" and p.reference_caption == "a red square" for p in photos)
    assert all(p.id in result.output for p in photos) and all(p.hint_word for p in photos)


@pytest.mark.parametrize("make, message", [
    (lambda d: str(d / "missing.png"), "no such file"),
    (lambda d: (d / "notes.png").write_text("hello") and str(d / "notes.png"), "not an image"),
    (lambda d: _photo(d / "tiny.png", (1, 2, 3), size=(8, 8)), "32 pixels"),
])
def test_add_photo_rejects_bad_files_and_adds_none(cli, store, tmp_path, make, message):
    good = _photo(tmp_path / "good.png", (0, 200, 0))
    bad = make(tmp_path)
    assert _failed(cli("targets", "add-photo", good, bad), message, "nothing added")
    assert store.list_targets() == []


def test_add_photo_refuses_a_decompression_bomb(cli, store, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(bomb)  # 100 MP in a few kB
    assert _failed(cli("targets", "add-photo", str(bomb)), "MP")
    assert store.list_targets() == []


def test_add_photo_refuses_duplicates_and_bad_captions(cli, store, tmp_path):
    a = _photo(tmp_path / "a.png", (1, 100, 1))
    assert cli("targets", "add-photo", a).exit_code == 0
    assert _failed(cli("targets", "add-photo", a), "already target")
    c = _photo(tmp_path / "c.png", (1, 1, 100))
    assert _failed(cli("targets", "add-photo", c, c), "same image")
    assert _failed(cli("targets", "add-photo", c, "--caption", "x" * 300), "--caption")
    assert len(store.list_targets()) == 1


def test_seed_with_another_clip_stores_the_judges_self_score(cli, store, app, tmp_path):
    # Generating with a different CLIP than the game's judge: the stored self-score (what players must
    # beat) is the judge's cosine; the generator's own score is kept in the settings.
    import numpy as np
    import torch
    from engine.clip_model import load_clip
    other = load_clip("test-tiny", "random")
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(0.05)
    ckpt = tmp_path / "other-tiny.bin"
    torch.save(other.model.state_dict(), ckpt)
    result = cli("targets", "seed", "a tree growing out of a teacup", "--clip-model", "test-tiny",
                 "--clip-pretrained", str(ckpt), "--vqgan-model", "test-tiny", *GEN)
    assert result.exit_code == 0, result.output
    [target] = store.list_targets(kind="gan")
    assert target.settings["clip_model"] == "test-tiny/file:other-tiny.bin"
    scorer = app.extensions["scorer"]
    expected = float(np.dot(scorer.embed_texts([target.prompt])[0], store.target_embedding(target.id)))
    assert target.self_score == pytest.approx(expected, abs=1e-5)
    assert target.settings["generation_self_score"] != pytest.approx(target.self_score, abs=1e-6)


def test_jobs_shows_progress_of_live_workers_and_flags_dead_ones(cli, app):
    from game.generation.jobs import JobQueue
    from game.generation.worker import Worker
    redis = app.extensions["redis"]
    queue = JobQueue(redis)
    a = queue.enqueue({"prompt": "job of a live worker"})
    b = queue.enqueue({"prompt": "job of a dead worker"})
    live = Worker.from_app(app, name="live-worker", top_up=False)
    job_a = queue.claim("live-worker")
    redis.hset(f"captionary:jobs:job:{job_a.id}", "progress", "12/40")
    live.heartbeat("working", job_a, "12/40")
    queue.claim("dead-worker")  # no heartbeat: killed
    lines = {line.split()[0]: line for line in cli("targets", "jobs").output.splitlines()[1:]}
    assert "running 12/40" in lines[a] and "running (worker gone)" in lines[b]


def test_seeding_the_same_image_twice_is_refused(cli, store):
    args = ("targets", "seed", "a bowl of fruit on fire", *TINY, *GEN, "--seed", "3")
    assert cli(*args).exit_code == 0
    assert _failed(cli(*args), "not added", "already target")
    assert len(store.list_targets()) == 1


def test_progress_bar_shows_iteration_score_and_speed(app):
    from game.cli import _progress_printer
    with app.app_context():
        on_step, bar = _progress_printer(40)
        with bar:
            on_step({"iteration": 9, "total": 40, "score": 0.25, "it_s": 12.5})
            assert bar.pos == 10
            assert bar.item_show_func(bar.current_item) == "it 10/40  score 0.2500  12.5 it/s"
            on_step({"iteration": 39, "total": 40, "score": None, "it_s": 13.0})
            assert bar.pos == 40 and "score -" in bar.item_show_func(bar.current_item)
