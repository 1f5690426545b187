"""The protocol as plain functions: message parsing, batching of overtaken drafts, game actions
(real Redis and the tiny CLIP, no sockets)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from game.service import ProtocolError, parse_message, public_id
from game.web.ws import Connection, handle_batch


def code_of(raw, max_bytes=4096):
    with pytest.raises(ProtocolError) as info:
        parse_message(raw, max_bytes)
    return info.value.code


def test_parse_accepts_each_message_type():
    assert parse_message('{"type":"ping"}', 100) == {"type": "ping"}
    draft = parse_message(json.dumps({"type": "draft", "seq": 3, "puzzle": "2026-01-01/1", "caption": "hi"}), 4096)
    assert draft["seq"] == 3 and draft["caption"] == "hi"
    assert parse_message(b'{"type":"hello"}', 100)["type"] == "hello"
    assert parse_message('{"type":"subscribe","puzzles":["2026-01-01/1"]}', 100)["puzzles"] == ["2026-01-01/1"]


@pytest.mark.parametrize("raw, code", [
    ("", "bad_json"), ("{", "bad_json"), ("null", "bad_message"), ('"draft"', "bad_message"),
    ("[]", "bad_message"), ("{}", "missing_field"), ('{"type":"DRAFT"}', "unknown_type"),
    ('{"type":null}', "missing_field"), ('{"type":["x"]}', "unknown_type"),
    ('{"type":"draft","seq":1,"puzzle":"p"}', "missing_field"),
    ('{"type":"draft","seq":true,"puzzle":"p","caption":"c"}', "bad_field"),
    ('{"type":"draft","seq":1.5,"puzzle":"p","caption":"c"}', "bad_field"),
    ('{"type":"draft","seq":1,"puzzle":1,"caption":"c"}', "bad_field"),
    ('{"type":"submit","puzzle":"p","caption":null}', "bad_field"),
    ('{"type":"subscribe","puzzles":"p"}', "bad_field"),
    ('{"type":"subscribe","puzzles":[' + ",".join(['"p"'] * 17) + "]}", "bad_field"),
    (b"\xff\xfe", "bad_json"), ("[" * 100000, "too_big"),
])
def test_parse_rejects_bad_messages_with_codes(raw, code):
    assert code_of(raw, 200_000 if code != "too_big" else 4096) == code


def test_deeply_nested_json_is_a_clear_error():
    assert code_of("[" * 50000 + "]" * 50000, 1 << 20) in ("bad_json", "bad_message")


def test_errors_carry_the_drafts_seq():
    with pytest.raises(ProtocolError) as info:
        parse_message('{"type":"draft","seq":7,"puzzle":"p"}', 100)
    assert info.value.reply() == {"type": "error", "code": "missing_field", "seq": 7,
                                  "message": 'a draft message needs "caption"'}


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                              lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                          max_size=4),
                              max_leaves=20).map(json.dumps)))
def test_parse_never_fails_with_anything_but_a_protocol_error(raw):
    try:
        msg = parse_message(raw, 4096)
    except ProtocolError as exc:
        assert exc.code and exc.message
    else:
        assert isinstance(msg, dict) and msg["type"] in ("hello", "draft", "submit", "subscribe", "hint", "ping")


def test_public_id_hides_the_session_id():
    assert public_id("abcdefgh12345678") == public_id("abcdefgh12345678")
    assert "abcdefgh" not in public_id("abcdefgh12345678")
    assert public_id("abcdefgh12345678") != public_id("abcdefgh12345679")


def test_overtaken_drafts_are_dropped_unscored(app, seeded):
    game, scorer = app.extensions["game"], app.extensions["scorer"]
    p = seeded[0].id
    frames = [json.dumps({"type": "draft", "seq": i, "puzzle": p, "caption": "a red" + " square" * i})
              for i in range(1, 5)]
    frames.insert(2, '{"type":"ping"}')
    frames.append("not json")
    before = scorer.stats()
    replies = list(handle_batch(game, None, Connection(None, "player-one-abcdef"), frames, 4096))
    assert [r["type"] for r in replies] == ["dropped", "dropped", "pong", "dropped", "score", "error"]
    assert [r.get("seq") for r in replies[:5]] == [1, 2, None, 3, 4]
    after = scorer.stats()
    # Exactly one caption reached the scorer (whatever path it took inside).
    scored = {k: after.get(k, 0) - before.get(k, 0) for k in after if isinstance(after[k], (int, float))}
    assert scored["requests"] == 1


def test_game_actions_without_sockets(app, seeded, clock):
    game, store = app.extensions["game"], app.extensions["store"]
    p = seeded[1]
    player = "player-one-abcdef"
    score = game.draft(player, {"seq": 1, "puzzle": p.id, "caption": "green"})
    assert score["type"] == "score" and -1 <= score["score"] <= 1
    result = game.submit(player, {"puzzle": p.id, "caption": "green"})
    assert result["rank"] == 1 and result["best"] == pytest.approx(score["score"], abs=1e-6)
    board = game.board(p.id, viewer=player)
    assert board["entries"][0]["you"] is True and board["captions_hidden"] is True
    assert "caption" not in board["entries"][0]
    assert board["entries"][0]["player"] == public_id(player)
    # After the day ends the board shows captions; the board itself never changes.
    clock.advance(days=1)
    final = game.board(p.id)
    assert final["captions_hidden"] is False and final["entries"][0]["caption"] == "green"
    with pytest.raises(ProtocolError) as info:
        game.puzzle("2999-01-01/1")
    assert info.value.code == "not_yet"
    assert store.today() > p.date


def test_rate_limited_captions_are_not_tokenized(tmp_path, redis_url, redis_client, clock):
    """Order of work: cheap checks, then the rate limit, then tokenizing; a client over its
    budget costs no BPE work (every new word grows the tokenizer's cache and costs CPU)."""
    from tests.helpers.web import make_app
    app = make_app(tmp_path, redis_url, clock, DRAFT_RATE=0.001, DRAFT_BURST=1,
                   SUBMIT_RATE=0.001, SUBMIT_BURST=1)
    store, game = app.extensions["store"], app.extensions["game"]
    puzzle = _one_puzzle(app)
    bpe = app.extensions["scorer"].clip.tokenizer.bpe
    player = "player-limited-abcdef"
    assert game.draft(player, {"seq": 1, "puzzle": puzzle, "caption": "a cat"})["type"] == "score"
    assert game.submit(player, {"puzzle": puzzle, "caption": "a cat"})["type"] == "result"
    misses = bpe.cache_info().misses
    for i in range(20):
        for action, msg in ((game.draft, {"seq": i + 2, "puzzle": puzzle, "caption": f"qzxv{i}wordy"}),
                            (game.submit, {"puzzle": puzzle, "caption": f"pqjk{i}other"})):
            with pytest.raises(ProtocolError) as info:
                action(player, msg)
            assert info.value.code == "slow_down"
    assert bpe.cache_info().misses == misses  # not one of those 40 new words was tokenized


def _one_puzzle(app) -> str:
    """Today's first puzzle on a single seeded target."""
    from PIL import Image
    import io
    from tests.helpers.images import png_bytes
    store, scorer = app.extensions["store"], app.extensions["scorer"]
    data = png_bytes((200, 40, 40), size=(48, 40))
    store.add_target("photo", data, scorer.embed_image(Image.open(io.BytesIO(data))), title="t",
                     hint_word="red", hint_score=0.2, attribution="test image, CC0")
    return store.puzzles_for(store.today())[0].id
