"""Prompt syntax of the 2021 VQGAN+CLIP notebook and the popular CLI, parsed strictly.

  * `text:weight:stop` - weight defaults to 1 (negative pushes away), stop to
    -inf (once the distance to this prompt falls below `stop`, it stops pulling);
  * `a | b:0.5 | c:-1` - several prompts steered towards at once;
  * `scene one ^ scene two ^ scene three` - a story: the prompts change at given
    iterations (every `change_every` iterations, looping as the CLI does; by
    default the story is spread evenly over the run);
  * an explicit schedule: ((0, "a red barn"), (120, "a red barn on fire")).

Malformed input raises ValueError with the offending piece named, before any
model work starts. Image prompts are file paths with an optional trailing
`:weight:stop`, so a colon inside a path is kept when what follows is not a number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

MAX_PROMPTS = 64  # per segment; more is a typo or abuse, and each costs a text encode
MAX_PROMPT_CHARS = 1000


@dataclass(frozen=True)
class Prompt:
    """One steering target: a text (or an image path) with a weight and a stop distance."""

    text: str
    weight: float = 1.0  # negative: steer away from this text
    stop: float = float("-inf")  # no gradient once the spherical distance is below this


@dataclass(frozen=True)
class Segment:
    """The prompts in force from iteration `start` (inclusive) until the next segment."""

    start: int
    prompts: tuple[Prompt, ...]


def _number(value: str, what: str, piece: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"prompt {piece!r}: {what} {value!r} is not a number") from None
    if math.isnan(number):
        raise ValueError(f"prompt {piece!r}: {what} is NaN")
    return number


def parse_prompt(piece: str) -> Prompt:
    """Parse one `text[:weight[:stop]]`; a text may not itself contain ':'."""
    parts = piece.split(":")
    if len(parts) > 3:
        raise ValueError(f"prompt {piece.strip()!r}: too many ':' (expected text:weight:stop)")
    text = parts[0].strip()
    if not text:
        raise ValueError(f"prompt {piece.strip()!r}: empty text")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt text longer than {MAX_PROMPT_CHARS} characters")
    weight = _number(parts[1].strip(), "weight", piece.strip()) if len(parts) > 1 else 1.0
    stop = _number(parts[2].strip(), "stop", piece.strip()) if len(parts) > 2 else float("-inf")
    if math.isinf(weight):
        raise ValueError(f"prompt {piece.strip()!r}: weight must be finite")
    return Prompt(text, weight, stop)


def parse_prompts(text: str) -> tuple[Prompt, ...]:
    """Parse `a:w:s | b | c:-1` into prompts; at least one must have a non-zero weight."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty prompt")
    if "^" in text:
        raise ValueError("'^' separates story segments; use parse_schedule for a story")
    pieces = text.split("|")
    if len(pieces) > MAX_PROMPTS:
        raise ValueError(f"too many prompts ({len(pieces)} > {MAX_PROMPTS})")
    prompts = tuple(parse_prompt(p) for p in pieces)
    if all(p.weight == 0 for p in prompts):
        raise ValueError(f"prompt {text.strip()!r}: every weight is 0, nothing to steer towards")
    return prompts


def parse_image_prompt(piece: str) -> Prompt:
    """`path[:weight[:stop]]` where the trailing fields are numbers; other colons stay in the path."""
    parts = piece.rsplit(":", 2)
    numeric = []
    while len(parts) > 1:
        try:
            numeric.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    path = ":".join(parts).strip()
    if not path:
        raise ValueError(f"image prompt {piece!r}: empty path")
    weight = numeric[0] if numeric else 1.0
    stop = numeric[1] if len(numeric) > 1 else float("-inf")
    if math.isnan(weight) or math.isinf(weight) or math.isnan(stop):
        raise ValueError(f"image prompt {piece!r}: weight must be a finite number")
    return Prompt(path, weight, stop)


def parse_schedule(prompts: str, iterations: int, change_every: Optional[int] = None,
                   schedule: Sequence[tuple[int, str]] = ()) -> tuple[Segment, ...]:
    """The prompt segments of a run, sorted by start iteration; the first starts at 0.

    `schedule` (explicit (iteration, prompts) pairs) wins over `prompts`. Otherwise
    `prompts` may be a `^`-separated story: segment k starts at k * change_every
    and the story loops if the run is longer (the CLI's behaviour); without
    change_every the segments share the run evenly.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if schedule:
        segments = []
        for item in schedule:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise ValueError(f"schedule entries are (iteration, prompts) pairs, got {item!r}")
            start, text = item
            if not isinstance(start, int) or start < 0:
                raise ValueError(f"schedule iteration must be an int >= 0, got {start!r}")
            segments.append(Segment(start, parse_prompts(text)))
        segments.sort(key=lambda s: s.start)
        if segments[0].start != 0:
            raise ValueError("the schedule must start at iteration 0")
        if len({s.start for s in segments}) != len(segments):
            raise ValueError("two schedule entries start at the same iteration")
        return tuple(segments)
    if not isinstance(prompts, str) or not prompts.strip():
        raise ValueError("empty prompt")
    story = [part for part in prompts.split("^")]
    phrases = [parse_prompts(part) for part in story]
    if len(phrases) == 1:
        return (Segment(0, phrases[0]),)
    if change_every is None:
        change_every = max(1, math.ceil(iterations / len(phrases)))
    if change_every < 1:
        raise ValueError(f"change_every must be >= 1, got {change_every}")
    segments = []
    start, index = 0, 0
    while start < iterations:
        segments.append(Segment(start, phrases[index % len(phrases)]))
        start += change_every
        index += 1
    return tuple(segments)


def segment_at(segments: Sequence[Segment], iteration: int) -> int:
    """Index of the segment in force at `iteration` (segments sorted by start)."""
    index = 0
    for i, segment in enumerate(segments):
        if segment.start <= iteration:
            index = i
    return index


def score_text_of(prompts: Sequence[Prompt]) -> str:
    """The text the image is judged against: the positive prompts, in order, joined by ', '."""
    return ", ".join(p.text for p in prompts if p.weight > 0)
