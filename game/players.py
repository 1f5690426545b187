"""Players: anonymous ids and nickname validation (length, characters, a profanity filter).

A player is an opaque random id (kept by the web layer in a signed cookie).
Nicknames are what other players see on leaderboards, so they are checked:
2-20 characters after Unicode NFKC normalisation and whitespace folding;
letters, digits, spaces and `_ - .`; nothing invisible (fillers such as
U+3164, zero-width and bidi controls, any default-ignorable code point); no
word from the profanity list below, also when written with look-alike digits
(`sh1t`), look-alike letters from other scripts (Cyrillic `ѕһіt`, via the
TS #39 prototypes in game/skeleton.py), separators (`f.u.c.k`) or repeated
letters. Short words that hide inside harmless ones ("ass" in
"Cassandra", the Scunthorpe problem) only count as whole words; unmistakable
ones count anywhere in the name.
"""
from __future__ import annotations

import re
import secrets
import unicodedata

import regex

from game import skeleton as skeleton_mod

NICKNAME_MIN = 2
NICKNAME_MAX = 20
_PLAYER_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_ALLOWED = re.compile(r"^[\w .\-]+$")  # \w is Unicode letters/digits/underscore

# Rejected anywhere inside the folded name: no harmless English word contains them.
_ANYWHERE = (
    "fuck", "fuk", "fck", "shit", "cunt", "nigger", "nigga", "faggot", "fagot", "bitch", "whore",
    "slut", "bollock", "asshole", "arsehole", "dickhead", "motherf", "pussy", "retard",
    "rapist", "nazi", "hitler", "kike", "tranny", "cocksuck", "blowjob", "handjob",
    "porn", "penis", "vagina", "dildo", "jizz", "cumshot", "bastard", "douche", "paedo",
    "hentai", "milf", "scrotum", "testicle", "wetback", "raghead",
)
# Harmless words that contain one of the above; removed before the substring check.
_HARMLESS = ("scunthorpe", "therapist", "penistone", "shiitake", "shitake", "cockburn")
# Rejected only as a whole word (they occur inside ordinary names and words).
_WHOLE_WORD = (
    "ass", "arse", "cum", "cock", "dick", "fag", "tit", "tits", "sex", "rape", "anal", "anus",
    "coon", "homo", "damn", "crap", "piss", "poop", "nude", "nudes", "xxx", "kkk", "isis",
    "hoe", "hoes", "jap", "negro", "wop", "dyke", "queef", "smegma", "turd", "prick",
    "spic", "chink", "pedo", "clit", "wank", "wanker", "retard", "twat", "gook", "boner",
)
# Characters a reader cannot see, or that reorder or hide what follows: every
# default-ignorable code point (Unicode's own list, through the `regex` module:
# the Hangul fillers U+115F/U+1160/U+3164/U+FFA0, zero-width joiners and spaces,
# variation selectors, tags), every format character (bidi controls, soft
# hyphen), and U+2800 BRAILLE PATTERN BLANK, which is a visible-width blank that
# Unicode does not class as ignorable.
_INVISIBLE = regex.compile(r"[\p{Default_Ignorable_Code_Point}\p{Cf}\u2800]")
INVISIBLE_MESSAGE = ("the nickname cannot contain invisible characters "
                     "(blank fillers, zero-width spaces or text-direction marks)")
# Digit and symbol look-alikes folded before matching (other scripts go through the skeleton prototypes).
_LEET = str.maketrans({"0": "o", "1": "i", "!": "i", "3": "e", "4": "a", "@": "a", "5": "s",
                       "$": "s", "7": "t", "8": "b", "9": "g", "|": "i", "+": "t"})


def new_player_id() -> str:
    """A fresh anonymous player id (128 random bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def is_valid_player_id(value) -> bool:
    return isinstance(value, str) and bool(_PLAYER_ID.match(value))


def _squeeze(text: str) -> str:
    """Collapse runs of the same letter: "fuuuck" -> "fuck"."""
    return re.sub(r"(.)\1+", r"\1", text)


def is_profane(text: str) -> bool:
    """True when `text` contains a listed word, after folding look-alikes and separators."""
    # The name as written, and with look-alikes folded to their TS #39
    # prototypes (foreign letters; then ASCII ones too, "SIut"): a name is
    # refused when any of these spellings matches.
    forms = {text, skeleton_mod.latin_lookalikes(text), skeleton_mod.latin_lookalikes(text, ascii_too=True)}
    return any(_has_listed_word(form) for form in forms)


def _has_listed_word(text: str) -> bool:
    lowered = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower().translate(_LEET)
    words = re.findall(r"[a-z]+", lowered)
    for harmless in _HARMLESS:
        lowered = lowered.replace(harmless, " ")
    joined = "".join(re.findall(r"[a-z]+", lowered))
    for candidate in (joined, _squeeze(joined)):
        if any(bad in candidate for bad in _ANYWHERE):
            return True
    whole = set(_WHOLE_WORD)
    for word in words:
        if word in whole or _squeeze(word) in whole or word.rstrip("s") in whole:
            return True
    # Letters spelled out with separators ("a s s", "d.i.c.k") are one word to a reader.
    singles = "".join(w for w in words if len(w) == 1)
    if len(singles) >= 3 and (singles in whole or any(bad in singles for bad in _ANYWHERE)):
        return True
    return False


def validate_nickname(nickname) -> str:
    """The cleaned nickname, or ValueError with a message a player can read."""
    if not isinstance(nickname, str):
        raise ValueError("the nickname must be text")
    # Refused, never stripped: a stripped name would save as something other than
    # what the player typed. Checked before NFKC (nothing is folded away unseen)
    # and after it (no compatibility character can normalise into one).
    if _INVISIBLE.search(nickname):
        raise ValueError(INVISIBLE_MESSAGE)
    cleaned = " ".join(unicodedata.normalize("NFKC", nickname).split())
    if _INVISIBLE.search(cleaned):
        raise ValueError(INVISIBLE_MESSAGE)
    if len(cleaned) < NICKNAME_MIN:
        raise ValueError(f"the nickname needs at least {NICKNAME_MIN} characters")
    if len(cleaned) > NICKNAME_MAX:
        raise ValueError(f"the nickname can have at most {NICKNAME_MAX} characters")
    if not _ALLOWED.match(cleaned) or any(unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs") for c in cleaned):
        raise ValueError("the nickname can only use letters, digits, spaces and _ - .")
    if not any(c.isalnum() for c in cleaned):
        raise ValueError("the nickname needs at least one letter or digit")
    if is_profane(cleaned):
        raise ValueError("please choose a different nickname")
    return cleaned


def nickname_key(cleaned: str) -> str:
    """The uniqueness key of a validated nickname: its confusable skeleton (case-blind)."""
    return skeleton_mod.skeleton(cleaned)


def default_nickname(player_id: str) -> str:
    """What boards show for a player without a nickname: stable, and not the secret-ish id itself."""
    import hashlib
    return "player-" + hashlib.sha256(player_id.encode()).hexdigest()[:6]
