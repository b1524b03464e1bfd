"""What a prompt asks the built-in renderer for: palette, lighting, subjects and composition."""

from __future__ import annotations

import colorsys
import enum
import hashlib
import random
import re
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PALETTES",
    "RGB",
    "Lighting",
    "Palette",
    "Scene",
    "Subject",
    "compose_scene",
    "mix",
    "prompt_words",
    "quoted_text",
]

RGB = tuple[int, int, int]


class Lighting(enum.StrEnum):
    """The light a scene is lit by; decides the sky body, haze and whether windows glow."""

    GOLDEN = "golden"
    DAY = "day"
    NIGHT = "night"
    FOG = "fog"
    STORM = "storm"
    NEON = "neon"


class Subject(enum.StrEnum):
    """Something the renderer knows how to draw."""

    SUN = "sun"
    MOON = "moon"
    STARS = "stars"
    PLANET = "planet"
    CLOUDS = "clouds"
    MOUNTAINS = "mountains"
    HILLS = "hills"
    DUNES = "dunes"
    CITY = "city"
    TREES = "trees"
    PALMS = "palms"
    WATER = "water"
    BOAT = "boat"
    TOWER = "tower"
    HOUSE = "house"
    FIGURE = "figure"
    BIRDS = "birds"
    RAIN = "rain"
    SNOW = "snow"
    GRID = "grid"
    LIGHTNING = "lightning"


TERRAINS = (Subject.MOUNTAINS, Subject.HILLS, Subject.DUNES)


@dataclass(frozen=True)
class Palette:
    """The colours of a scene: sky from zenith to horizon, land from farthest to nearest."""

    name: str
    sky: tuple[RGB, RGB, RGB]
    land: tuple[RGB, RGB, RGB, RGB]
    water: RGB
    sun: RGB
    ink: RGB
    light: RGB
    lighting: Lighting

    def rotated(self, degrees: float) -> Palette:
        """The same palette with every hue turned by `degrees`."""
        if not degrees:
            return self

        def turn(colour: RGB) -> RGB:
            hue, lightness, saturation = colorsys.rgb_to_hls(*(c / 255 for c in colour))
            hue = (hue + degrees / 360) % 1.0
            red, green, blue = colorsys.hls_to_rgb(hue, lightness, saturation)
            return (round(red * 255), round(green * 255), round(blue * 255))

        return Palette(
            name=self.name,
            sky=(turn(self.sky[0]), turn(self.sky[1]), turn(self.sky[2])),
            land=(turn(self.land[0]), turn(self.land[1]), turn(self.land[2]), turn(self.land[3])),
            water=turn(self.water),
            sun=turn(self.sun),
            ink=turn(self.ink),
            light=turn(self.light),
            lighting=self.lighting,
        )


def mix(first: RGB, second: RGB, amount: float) -> RGB:
    """The colour `amount` of the way from `first` to `second`."""
    return (
        round(first[0] + (second[0] - first[0]) * amount),
        round(first[1] + (second[1] - first[1]) * amount),
        round(first[2] + (second[2] - first[2]) * amount),
    )


def _toward(
    colours: tuple[RGB, RGB, RGB, RGB], target: RGB, amounts: tuple[float, float, float, float]
) -> tuple[RGB, RGB, RGB, RGB]:
    return (
        mix(colours[0], target, amounts[0]),
        mix(colours[1], target, amounts[1]),
        mix(colours[2], target, amounts[2]),
        mix(colours[3], target, amounts[3]),
    )


@dataclass(frozen=True)
class _Relight:
    """How a palette changes under a light it was not made for: toward which colours, how far."""

    sky: tuple[RGB, RGB, RGB]
    sky_amounts: tuple[float, float, float]
    land: RGB
    land_amount: float
    water: RGB


_RELIGHT: dict[Lighting, _Relight] = {
    Lighting.NIGHT: _Relight(
        ((4, 8, 28), (18, 30, 70), (56, 72, 120)), (0.8, 0.75, 0.7), (10, 14, 34), 0.7, (12, 20, 48)
    ),
    Lighting.GOLDEN: _Relight(
        ((60, 50, 110), (226, 132, 120), (255, 184, 104)),
        (0.5, 0.7, 0.8),
        (70, 36, 60),
        0.3,
        (120, 70, 100),
    ),
    Lighting.STORM: _Relight(
        ((40, 46, 56), (86, 96, 106), (150, 160, 160)),
        (0.7, 0.6, 0.5),
        (40, 48, 48),
        0.5,
        (56, 66, 72),
    ),
    Lighting.FOG: _Relight(
        ((214, 218, 220), (214, 218, 220), (214, 218, 220)),
        (0.5, 0.6, 0.7),
        (214, 218, 220),
        0.3,
        (214, 218, 220),
    ),
    Lighting.NEON: _Relight(
        ((12, 6, 34), (70, 14, 104), (255, 52, 156)),
        (0.8, 0.6, 0.55),
        (30, 6, 60),
        0.6,
        (24, 8, 56),
    ),
    Lighting.DAY: _Relight(
        ((70, 130, 210), (160, 200, 230), (236, 240, 236)),
        (0.4, 0.4, 0.4),
        (0, 0, 0),
        0.0,
        (0, 0, 0),
    ),
}


def _under(palette: Palette, lighting: Lighting) -> Palette:
    """`palette` re-lit when the prompt asks for a light the palette was not made for."""
    if lighting is palette.lighting:
        return palette
    change = _RELIGHT[lighting]
    sky = (
        mix(palette.sky[0], change.sky[0], change.sky_amounts[0]),
        mix(palette.sky[1], change.sky[1], change.sky_amounts[1]),
        mix(palette.sky[2], change.sky[2], change.sky_amounts[2]),
    )
    # Fog swallows the far land more than the near land; other lights fall on all of it alike.
    fading = (1.0, 0.8, 0.6, 0.4) if lighting is Lighting.FOG else (1.0, 1.0, 1.0, 1.0)
    amount = change.land_amount
    land = _toward(
        palette.land,
        change.land,
        (amount * fading[0], amount * fading[1], amount * fading[2], amount * fading[3]),
    )
    water = mix(palette.water, change.water, amount)
    return Palette(
        palette.name, sky, land, water, palette.sun, palette.ink, palette.light, lighting
    )


def _palette(
    name: str,
    sky: tuple[RGB, RGB, RGB],
    land: tuple[RGB, RGB, RGB, RGB],
    water: RGB,
    sun: RGB,
    ink: RGB,
    light: RGB,
    lighting: Lighting,
) -> Palette:
    return Palette(name, sky, land, water, sun, ink, light, lighting)


PALETTES: dict[str, Palette] = {
    palette.name: palette
    for palette in (
        _palette(
            "sunset",
            ((44, 38, 98), (196, 84, 112), (255, 178, 96)),
            ((168, 92, 118), (118, 58, 100), (74, 36, 78), (36, 18, 44)),
            (92, 56, 108),
            (255, 238, 176),
            (26, 12, 32),
            (255, 206, 128),
            Lighting.GOLDEN,
        ),
        _palette(
            "dawn",
            ((64, 96, 168), (232, 174, 182), (255, 222, 176)),
            ((164, 144, 184), (126, 108, 158), (88, 78, 124), (50, 44, 80)),
            (126, 128, 178),
            (255, 246, 220),
            (30, 26, 52),
            (255, 224, 160),
            Lighting.GOLDEN,
        ),
        _palette(
            "ocean",
            ((22, 66, 128), (70, 150, 206), (196, 232, 242)),
            ((102, 150, 172), (66, 116, 140), (40, 84, 104), (22, 52, 70)),
            (24, 96, 146),
            (255, 252, 232),
            (10, 30, 46),
            (255, 240, 200),
            Lighting.DAY,
        ),
        _palette(
            "forest",
            ((72, 124, 156), (156, 196, 186), (228, 234, 206)),
            ((120, 160, 128), (74, 124, 84), (42, 92, 58), (20, 56, 36)),
            (52, 104, 104),
            (255, 246, 214),
            (12, 36, 22),
            (255, 226, 150),
            Lighting.DAY,
        ),
        _palette(
            "neon",
            ((12, 6, 34), (70, 14, 104), (255, 52, 156)),
            ((92, 24, 132), (58, 12, 98), (32, 6, 64), (16, 2, 34)),
            (24, 8, 56),
            (255, 122, 208),
            (6, 0, 16),
            (0, 246, 226),
            Lighting.NEON,
        ),
        _palette(
            "noir",
            ((18, 18, 20), (96, 96, 98), (214, 214, 210)),
            ((128, 128, 128), (86, 86, 88), (48, 48, 50), (20, 20, 22)),
            (62, 62, 66),
            (246, 246, 240),
            (6, 6, 8),
            (242, 240, 226),
            Lighting.DAY,
        ),
        _palette(
            "desert",
            ((62, 124, 194), (176, 196, 214), (252, 224, 176)),
            ((226, 174, 114), (206, 142, 84), (176, 110, 62), (132, 76, 42)),
            (84, 150, 176),
            (255, 250, 224),
            (62, 36, 22),
            (255, 230, 170),
            Lighting.DAY,
        ),
        _palette(
            "winter",
            ((92, 132, 184), (174, 204, 228), (238, 242, 246)),
            ((204, 216, 232), (162, 186, 212), (122, 150, 182), (232, 238, 246)),
            (112, 152, 188),
            (255, 252, 242),
            (42, 56, 78),
            (255, 226, 170),
            Lighting.DAY,
        ),
        _palette(
            "autumn",
            ((92, 112, 152), (214, 172, 132), (252, 214, 154)),
            ((192, 124, 84), (172, 84, 46), (122, 56, 36), (72, 36, 26)),
            (112, 102, 112),
            (255, 238, 192),
            (42, 20, 16),
            (255, 206, 120),
            Lighting.GOLDEN,
        ),
        _palette(
            "night",
            ((6, 10, 32), (22, 38, 80), (64, 84, 134)),
            ((44, 54, 90), (30, 38, 70), (18, 24, 50), (8, 12, 28)),
            (16, 26, 58),
            (238, 236, 218),
            (3, 5, 12),
            (255, 212, 124),
            Lighting.NIGHT,
        ),
        _palette(
            "cosmic",
            ((8, 0, 22), (44, 16, 76), (126, 54, 146)),
            ((74, 32, 104), (52, 22, 82), (30, 12, 56), (14, 4, 30)),
            (32, 16, 62),
            (252, 222, 255),
            (5, 0, 10),
            (142, 232, 255),
            Lighting.NIGHT,
        ),
        _palette(
            "pastel",
            ((182, 202, 242), (242, 204, 222), (255, 232, 204)),
            ((206, 184, 224), (174, 162, 212), (150, 192, 202), (122, 162, 172)),
            (172, 202, 232),
            (255, 250, 236),
            (82, 92, 122),
            (255, 236, 190),
            Lighting.DAY,
        ),
        _palette(
            "ember",
            ((32, 6, 6), (124, 28, 12), (255, 126, 34)),
            ((94, 22, 16), (64, 14, 10), (40, 8, 6), (20, 4, 4)),
            (72, 22, 12),
            (255, 222, 124),
            (10, 2, 2),
            (255, 184, 62),
            Lighting.GOLDEN,
        ),
        _palette(
            "meadow",
            ((82, 152, 222), (152, 202, 236), (228, 242, 242)),
            ((152, 192, 134), (112, 170, 92), (80, 146, 62), (50, 112, 42)),
            (72, 142, 192),
            (255, 252, 232),
            (26, 56, 26),
            (255, 232, 160),
            Lighting.DAY,
        ),
        _palette(
            "tropical",
            ((0, 140, 204), (92, 210, 224), (242, 242, 204)),
            ((62, 180, 150), (32, 150, 112), (22, 120, 82), (232, 212, 162)),
            (0, 166, 188),
            (255, 252, 226),
            (10, 62, 52),
            (255, 236, 170),
            Lighting.DAY,
        ),
        _palette(
            "storm",
            ((40, 46, 56), (86, 96, 106), (152, 162, 162)),
            ((82, 92, 92), (62, 72, 72), (42, 52, 52), (24, 30, 30)),
            (56, 66, 72),
            (226, 230, 222),
            (14, 18, 20),
            (255, 238, 196),
            Lighting.STORM,
        ),
    )
}

_LIGHTING_PALETTE = {
    Lighting.GOLDEN: "sunset",
    Lighting.NIGHT: "night",
    Lighting.NEON: "neon",
    Lighting.STORM: "storm",
}


@dataclass(frozen=True)
class _Cue:
    """What one word of a prompt says about the picture."""

    palette: str | None = None
    lighting: Lighting | None = None
    subjects: tuple[Subject, ...] = ()


def _cues(
    words: str, palette: str | None, lighting: Lighting | None, *subjects: Subject
) -> dict[str, _Cue]:
    return dict.fromkeys(words.split(), _Cue(palette, lighting, subjects))


_S = Subject
_L = Lighting
_KEYWORDS: dict[str, _Cue] = {
    **_cues("sunset dusk evening twilight", "sunset", _L.GOLDEN, _S.SUN),
    **_cues("sunrise dawn morning daybreak", "dawn", _L.GOLDEN, _S.SUN),
    **_cues("golden warm glow glowing", None, _L.GOLDEN, _S.SUN),
    **_cues("ocean sea seas beach coast shore waves", "ocean", None, _S.WATER),
    **_cues("lake river pond water reflection reflections", None, None, _S.WATER),
    **_cues("forest forests woods woodland jungle pine pines", "forest", None, _S.TREES),
    **_cues("tree trees", None, None, _S.TREES),
    **_cues("neon cyberpunk synthwave retro vaporwave", "neon", _L.NEON, _S.GRID),
    **_cues("noir monochrome grayscale greyscale", "noir", None),
    **_cues("city cities skyline town downtown metropolis street", None, None, _S.CITY),
    **_cues("buildings skyscraper skyscrapers urban", None, None, _S.CITY),
    **_cues("mountain mountains alps peak peaks summit ridge range", None, None, _S.MOUNTAINS),
    **_cues("hill hills meadow meadows field fields countryside valley", "meadow", None, _S.HILLS),
    **_cues("desert dune dunes sand sahara canyon", "desert", None, _S.DUNES),
    **_cues("night midnight nocturnal", "night", _L.NIGHT, _S.MOON, _S.STARS),
    **_cues("moon moonlit moonlight lunar", None, _L.NIGHT, _S.MOON),
    **_cues("star stars starry", None, _L.NIGHT, _S.STARS),
    **_cues("space galaxy cosmic cosmos nebula universe", "cosmic", _L.NIGHT, _S.STARS, _S.PLANET),
    **_cues("planet planets alien saturn", "cosmic", None, _S.PLANET),
    **_cues("snow snowy winter ice icy frozen arctic glacier", "winter", None, _S.SNOW),
    **_cues("autumn fall harvest", "autumn", None, _S.TREES),
    **_cues("storm stormy rain rainy", "storm", _L.STORM, _S.RAIN, _S.CLOUDS),
    **_cues("thunder thunderstorm lightning", "storm", _L.STORM, _S.LIGHTNING),
    **_cues("fog foggy mist misty haze hazy", None, _L.FOG),
    **_cues("cloud clouds cloudy overcast", None, None, _S.CLOUDS),
    **_cues("person man woman figure people traveler wanderer hiker", None, None, _S.FIGURE),
    **_cues("child girl boy stranger explorer astronaut lone alone", None, None, _S.FIGURE),
    **_cues("house cabin cottage home hut barn", None, None, _S.HOUSE),
    **_cues("bird birds crow crows gull gulls flock", None, None, _S.BIRDS),
    **_cues("boat boats ship sail sailboat yacht", None, None, _S.BOAT, _S.WATER),
    **_cues("lighthouse tower castle spire", None, None, _S.TOWER),
    **_cues("tropical island palm palms paradise", "tropical", None, _S.PALMS, _S.WATER),
    **_cues("volcano fire lava inferno ember embers", "ember", _L.GOLDEN, _S.MOUNTAINS),
    **_cues("pastel dream dreamy candy soft", "pastel", None),
    **_cues("sun sunny sunlit noon bright summer", None, _L.DAY, _S.SUN),
}

_WIDE = frozenset(["wide", "panorama", "panoramic", "vista", "landscape", "horizon", "epic"])
_AERIAL = frozenset(["aerial", "overhead", "drone", "above"])
_CENTRED = frozenset(["centered", "centred", "symmetric", "symmetrical", "portrait"])
_CLOSE = frozenset(["close", "closeup", "close-up", "macro", "giant", "huge"])
_MINIMAL = frozenset(["minimal", "minimalist", "simple", "lonely", "empty"])
_FRAMING = _WIDE | _AERIAL | _CENTRED | _CLOSE | _MINIMAL
# Sky and weather come with the light and mood; they do not say where things stand.
_WEATHER = frozenset(
    [
        Subject.SUN,
        Subject.MOON,
        Subject.STARS,
        Subject.CLOUDS,
        Subject.RAIN,
        Subject.SNOW,
        Subject.LIGHTNING,
    ]
)

# Subjects a prompt without any known subject word may get, by its hash.
_FALLBACK_SUBJECTS = (
    _S.CITY,
    _S.TREES,
    _S.WATER,
    _S.HOUSE,
    _S.FIGURE,
    _S.TOWER,
    _S.BIRDS,
    _S.CLOUDS,
    _S.PALMS,
)

_QUOTED = re.compile(r"[\"“”]([^\"“”]*)[\"“”]")
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def quoted_text(prompt: str) -> str:
    """The text in double quotes in `prompt`, the parts joined by spaces; empty if none."""
    return " ".join(part.strip() for part in _QUOTED.findall(prompt) if part.strip())


def prompt_words(prompt: str) -> tuple[str, ...]:
    """The lower-case words of `prompt` outside quotes: what chooses the picture."""
    return tuple(_WORD.findall(_QUOTED.sub(" ", prompt).lower()))


@dataclass(frozen=True)
class Scene:
    """A prompt and seed turned into what to draw and where; the same inputs, the same scene.

    Positions are fractions of the image: `horizon` of its height from the top, `focus`
    (the main subject) and `light_x` of its width, `light_y` of its height.
    """

    words: tuple[str, ...]
    text: str
    palette: Palette
    lighting: Lighting
    subjects: frozenset[Subject]
    terrain: Subject
    horizon: float
    focus: float
    light_x: float
    light_y: float
    subject_scale: float
    key: bytes

    def has(self, subject: Subject) -> bool:
        """Whether the scene shows `subject`."""
        return subject in self.subjects

    def rng(self, purpose: str) -> random.Random:
        """A random stream for one part of the picture, independent of every other part.

        Separate streams keep a part the same when a tier draws more or fewer of the others.
        """
        return random.Random(hashlib.sha256(self.key + purpose.encode()).digest())

    def generator(self, purpose: str) -> np.random.Generator:
        """A NumPy random stream for one part of the picture; see `rng`."""
        digest = hashlib.sha256(self.key + purpose.encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join(parts).encode()).digest()


def compose_scene(prompt: str, seed: int) -> Scene:
    """The scene `prompt` describes, laid out by `seed`.

    Known words pick the palette (the first word naming one), the lighting (the last word
    naming one) and the subjects; every other word still turns the palette's hues and moves
    things, so any change to the words changes the picture. The seed only moves things:
    variations of one prompt share its look. Quoted text is drawn, not read.
    """
    words = prompt_words(prompt)
    cues = [_KEYWORDS[word] for word in words if word in _KEYWORDS]
    unknown = [word for word in words if word not in _KEYWORDS]
    prompt_key = _digest("prompt", *words)

    palette_name = next((cue.palette for cue in cues if cue.palette), None)
    lighting = next((cue.lighting for cue in reversed(cues) if cue.lighting), None)
    if palette_name is None:
        by_lighting = _LIGHTING_PALETTE.get(lighting) if lighting else None
        palette_name = by_lighting or sorted(PALETTES)[prompt_key[0] % len(PALETTES)]
    palette = PALETTES[palette_name]
    lighting = lighting or palette.lighting
    palette = _under(palette, lighting)
    if unknown:
        turn = int.from_bytes(_digest("hue", *unknown)[:2], "big") / 65535
        palette = palette.rotated((turn - 0.5) * 50)

    subjects: set[Subject] = {subject for cue in cues for subject in cue.subjects}
    minimal = any(word in _MINIMAL for word in words)
    if not subjects - {_S.SUN, _S.MOON, _S.STARS} and not minimal:
        count = 1 + prompt_key[1] % 2
        for index in range(count):
            subjects.add(_FALLBACK_SUBJECTS[prompt_key[2 + index] % len(_FALLBACK_SUBJECTS)])
    terrain = next((s for s in TERRAINS if s in subjects), TERRAINS[prompt_key[4] % len(TERRAINS)])
    subjects -= set(TERRAINS)
    if lighting in (Lighting.NIGHT, Lighting.STORM):
        subjects.discard(_S.SUN)
    subjects |= _sky_bodies(lighting)
    if _S.PALMS in subjects:
        subjects.add(_S.WATER)

    # Where things stand depends on the seed and on the words that say what is there or how it
    # is framed, not on mood or light: a handover that only adds "golden hour" keeps the
    # parent's composition, so a reference blend lines up instead of doubling the subjects.
    layout_words = sorted(
        {
            word
            for word in words
            if (word in _KEYWORDS and set(_KEYWORDS[word].subjects) - _WEATHER) or word in _FRAMING
        }
    )
    rng = random.Random(_digest("layout", str(seed), *layout_words))
    horizon = 0.6 + rng.uniform(-0.05, 0.05)
    if any(word in _WIDE for word in words):
        horizon += 0.08
    if any(word in _AERIAL for word in words):
        horizon -= 0.22
    side = rng.choice((-1, 1))
    centred = any(word in _CENTRED for word in words)
    focus = 0.5 if centred else 0.5 + side * rng.uniform(0.14, 0.22)
    light_x = 0.5 if centred else 0.5 - side * rng.uniform(0.12, 0.26)
    # A low sun sits just above the land, which mountains raise.
    low_sun = horizon - (0.24 if terrain is Subject.MOUNTAINS else 0.12)
    light_y = {
        Lighting.GOLDEN: low_sun,
        Lighting.NEON: horizon - 0.18,
        Lighting.FOG: horizon - 0.3,
    }.get(lighting, 0.2 + rng.uniform(-0.05, 0.05))
    scale = 1.8 if any(word in _CLOSE for word in words) else 1.0

    return Scene(
        words=words,
        text=quoted_text(prompt),
        palette=palette,
        lighting=lighting,
        subjects=frozenset(subjects),
        terrain=terrain,
        horizon=horizon,
        focus=focus,
        light_x=light_x,
        light_y=max(light_y, 0.1),
        subject_scale=scale,
        key=_digest("scene", str(seed), *layout_words),
    )


def _sky_bodies(lighting: Lighting) -> set[Subject]:
    if lighting is Lighting.NIGHT:
        return {_S.MOON, _S.STARS}
    if lighting is Lighting.STORM:
        return {_S.CLOUDS, _S.RAIN}
    return {_S.SUN}
