"""Players: ids and nickname validation (length, characters, profanity with look-alikes)."""
import pytest

from game.players import default_nickname, is_profane, is_valid_player_id, new_player_id, validate_nickname


def test_new_ids_are_random_and_valid():
    ids = {new_player_id() for _ in range(100)}
    assert len(ids) == 100 and all(is_valid_player_id(i) for i in ids)
    for bad in ("", "short", "has space in it", "../../etc/passwd", "x" * 65, None, 12345678):
        assert not is_valid_player_id(bad)


@pytest.mark.parametrize("raw, clean", [
    ("Ada", "Ada"), ("  Grace   Hopper ", "Grace Hopper"), ("José_99", "José_99"), ("r2-d2.bot", "r2-d2.bot"),
    ("Ｆｕｌｌwidth", "Fullwidth"),  # NFKC folds full-width letters
    ("Cassandra", "Cassandra"), ("Scunthorpe", "Scunthorpe"), ("Dickens fan", "Dickens fan"),
    ("class act", "class act"), ("the therapist", "the therapist"), ("Hancock", "Hancock"),
])
def test_good_nicknames_are_cleaned_and_kept(raw, clean):
    assert validate_nickname(raw) == clean


@pytest.mark.parametrize("raw, message", [
    ("a", "at least 2"), ("x" * 21, "at most 20"), ("", "at least"), ("   ", "at least"),
    ("<script>", "letters, digits"), ("bob\u202e", "invisible"), ("bell\x07", "letters, digits"), ("---", "letter or digit"),
    (None, "must be text"), (42, "must be text"),
])
def test_bad_nicknames_are_refused_with_a_reason(raw, message):
    with pytest.raises(ValueError) as info:
        validate_nickname(raw)
    if message:
        assert message in str(info.value)


@pytest.mark.parametrize("name", [
    "fuck", "FuCk you", "fuuuuck", "f.u.c.k", "f u c k", "sh1t", "5hit", "a s s", "big ass", "dick",
    "b1tch", "n1gger", "cuntface", "motherfucker", "shitshow", "wanker",
])
def test_profanity_is_refused_even_disguised(name):
    assert is_profane(name)
    with pytest.raises(ValueError, match="different nickname"):
        validate_nickname(name)


def test_default_nickname_is_stable_and_hides_the_id():
    pid = new_player_id()
    assert default_nickname(pid) == default_nickname(pid)
    assert default_nickname(pid).startswith("player-") and pid not in default_nickname(pid)
