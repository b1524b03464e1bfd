"""How the built-in renderer reads a prompt: palette, lighting, subjects and layout."""

from __future__ import annotations

import pytest

from services.generator.painting.scene import (
    PALETTES,
    Lighting,
    Subject,
    compose_scene,
    prompt_words,
    quoted_text,
)


def test_quoted_text_is_drawn_not_read() -> None:
    prompt = 'A neon sign saying "Open Late" over a “rainy” street'
    assert quoted_text(prompt) == "Open Late rainy"
    assert prompt_words(prompt) == ("a", "neon", "sign", "saying", "over", "a", "street")
    assert quoted_text("no quotes here") == ""
    assert quoted_text('empty "" quotes') == ""


def test_words_ignore_case_and_punctuation() -> None:
    assert prompt_words("Sunset, OCEAN!  close-up") == ("sunset", "ocean", "close-up")


@pytest.mark.parametrize(
    ("prompt", "palette", "lighting", "subjects"),
    [
        ("a sunset over the ocean", "sunset", Lighting.GOLDEN, {Subject.SUN, Subject.WATER}),
        ("neon city", "neon", Lighting.NEON, {Subject.CITY, Subject.GRID}),
        ("a forest at night", "forest", Lighting.NIGHT, {Subject.TREES, Subject.MOON}),
        ("snowy mountains", "winter", Lighting.DAY, {Subject.SNOW}),
        ("a storm over the sea", "storm", Lighting.STORM, {Subject.RAIN, Subject.CLOUDS}),
        ("a noir street in the fog", "noir", Lighting.FOG, {Subject.CITY}),
        ("a boat", None, None, {Subject.BOAT, Subject.WATER}),
    ],
)
def test_known_words_choose_the_picture(
    prompt: str, palette: str | None, lighting: Lighting | None, subjects: set[Subject]
) -> None:
    scene = compose_scene(prompt, 1)
    if palette is not None:
        assert scene.palette.name == palette
    if lighting is not None:
        assert scene.lighting is lighting
    assert subjects <= scene.subjects


def test_terrain_words_choose_the_land() -> None:
    assert compose_scene("desert dunes", 1).terrain is Subject.DUNES
    assert compose_scene("alpine peaks", 1).terrain is Subject.MOUNTAINS
    assert compose_scene("rolling hills", 1).terrain is Subject.HILLS


def test_night_puts_out_the_sun() -> None:
    scene = compose_scene("a sunny beach at night", 1)
    assert Subject.MOON in scene.subjects
    assert Subject.SUN not in scene.subjects


def test_the_same_prompt_and_seed_give_the_same_scene() -> None:
    assert compose_scene("a quiet harbour", 9) == compose_scene("a quiet harbour", 9)


def test_the_seed_moves_things_but_keeps_the_look() -> None:
    first, second = compose_scene("a quiet harbour", 1), compose_scene("a quiet harbour", 2)
    assert first.palette == second.palette
    assert first.subjects == second.subjects
    assert (first.horizon, first.focus, first.key) != (second.horizon, second.focus, second.key)


def test_unknown_words_still_change_the_picture() -> None:
    first = compose_scene("zxq blorf", 1)
    second = compose_scene("zxq blorg", 1)
    assert first.palette.sky != second.palette.sky


def test_mood_and_light_words_keep_the_composition() -> None:
    # A handover that only changes the light must line up with its parent's image.
    parent = compose_scene("a lighthouse on a rocky coast, storm clouds", 3)
    child = compose_scene(
        "a lighthouse on a rocky coast, storm clouds, golden hour, fine detail", 3
    )
    assert (child.horizon, child.focus, child.key) == (parent.horizon, parent.focus, parent.key)
    assert child.lighting != parent.lighting
    moved = compose_scene("a lighthouse on a rocky coast, storm clouds, palm trees", 3)
    assert moved.key != parent.key


def test_layout_words_move_the_horizon_and_focus() -> None:
    plain = compose_scene("hills", 5)
    assert compose_scene("aerial hills", 5).horizon < plain.horizon - 0.1
    assert compose_scene("centered hills", 5).focus == 0.5
    assert compose_scene("close-up hills", 5).subject_scale > plain.subject_scale


def test_every_palette_is_made_of_valid_colours() -> None:
    for palette in PALETTES.values():
        colours = [*palette.sky, *palette.land, palette.water, palette.sun, palette.ink]
        assert all(0 <= channel <= 255 for colour in colours for channel in colour)


def test_rotating_a_palette_keeps_it_valid_and_zero_is_identity() -> None:
    palette = PALETTES["sunset"]
    assert palette.rotated(0) is palette
    turned = palette.rotated(25)
    assert turned.sky != palette.sky
    assert all(0 <= channel <= 255 for colour in turned.sky for channel in colour)
