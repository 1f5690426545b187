"""Tests for the prompt syntax: `text:weight:stop`, `|` lists, `^` stories, explicit schedules."""
import math

import pytest

from engine.prompts import (Prompt, Segment, parse_image_prompt, parse_prompt, parse_prompts, parse_schedule,
                            score_text_of, segment_at)


def test_defaults_weights_and_stops():
    assert parse_prompt("a raccoon driving a tractor") == Prompt("a raccoon driving a tractor", 1.0, -math.inf)
    assert parse_prompt(" fog :-0.5") == Prompt("fog", -0.5, -math.inf)
    assert parse_prompt("sky:2:0.7") == Prompt("sky", 2.0, 0.7)
    assert parse_prompts("raccoon | tractor:0.5 | blurry:-1") == (
        Prompt("raccoon"), Prompt("tractor", 0.5), Prompt("blurry", -1.0))


@pytest.mark.parametrize("text, fragment", [
    ("a:b:c:d", "too many ':'"),
    ("a raccoon:heavy", "weight 'heavy' is not a number"),
    ("a raccoon:1:soon", "stop 'soon' is not a number"),
    ("a:nan", "NaN"),
    ("a:inf", "finite"),
    ("", "empty prompt"),
    ("   ", "empty prompt"),
    ("raccoon | | tractor", "empty text"),
    (":2", "empty text"),
    ("a:0 | b:0", "every weight is 0"),
])
def test_malformed_prompts_name_the_problem(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_prompts(text)


def test_story_segments_spread_evenly_or_every_n_and_loop():
    even = parse_schedule("a barn ^ a barn on fire", iterations=10)
    assert [s.start for s in even] == [0, 5]
    assert [s.prompts[0].text for s in even] == ["a barn", "a barn on fire"]
    looping = parse_schedule("a ^ b", iterations=10, change_every=3)
    assert [(s.start, s.prompts[0].text) for s in looping] == [(0, "a"), (3, "b"), (6, "a"), (9, "b")]
    assert parse_schedule("a | b:2", iterations=5) == (Segment(0, (Prompt("a"), Prompt("b", 2.0))),)


def test_explicit_schedule_sorted_and_checked():
    segments = parse_schedule("ignored", 100, schedule=((50, "b"), (0, "a")))
    assert [(s.start, s.prompts[0].text) for s in segments] == [(0, "a"), (50, "b")]
    assert segment_at(segments, 0) == 0 and segment_at(segments, 49) == 0 and segment_at(segments, 50) == 1
    with pytest.raises(ValueError, match="start at iteration 0"):
        parse_schedule("x", 100, schedule=((10, "a"),))
    with pytest.raises(ValueError, match="same iteration"):
        parse_schedule("x", 100, schedule=((0, "a"), (0, "b")))
    with pytest.raises(ValueError, match="not a number"):
        parse_schedule("x", 100, schedule=((0, "a:x"),))
    with pytest.raises(ValueError, match="empty prompt"):
        parse_schedule("a ^ ", 10)


def test_image_prompt_paths_keep_their_colons():
    assert parse_image_prompt("C:/images/cat.png") == Prompt("C:/images/cat.png")
    assert parse_image_prompt("C:/images/cat.png:0.5") == Prompt("C:/images/cat.png", 0.5)
    assert parse_image_prompt("/tmp/a.png:-1:0.2") == Prompt("/tmp/a.png", -1.0, 0.2)
    with pytest.raises(ValueError, match="empty path"):
        parse_image_prompt(":0.5")


def test_score_text_is_the_positive_prompts():
    assert score_text_of(parse_prompts("raccoon | tractor:2 | blurry:-1")) == "raccoon, tractor"
