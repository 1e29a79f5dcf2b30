"""A miniature, procedural world: characters with recognisable traits, scenes, captions, clips.

Everything is a pure function of integers, so the world is the same on every machine.
Identities 0..BASE_IDENTITIES-1 are for base training; HELD_OUT_START onwards are held out
(never seen in base training) for learning identities from a few "photos". Each render
returns the image, the character's subject mask and its face box, so ID learning (masks),
Face VCD (face region) and the instruments all have ground truth.
"""

import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from magicme.identity.photos import MASK_SUFFIX

BASE_IDENTITIES = 64
HELD_OUT_START = 1000
# Held-out identities in two splits, for good: every setting of the world's recipe is chosen on
# the first; every table and the demo report on the second, which no benchmark chooses on.
CHOOSE_SPLIT = tuple(range(HELD_OUT_START, HELD_OUT_START + 10))
REPORT_SPLIT = tuple(range(HELD_OUT_START + 10, HELD_OUT_START + 40))
SKINS = {"pale": (250, 220, 196), "tan": (214, 170, 120), "brown": (150, 100, 64), "dark": (92, 60, 40)}
HAIRS = {"red": (200, 40, 30), "blond": (240, 210, 90), "black": (25, 25, 25), "blue": (40, 80, 220)}
HAIRS |= {"green": (40, 160, 60), "white": (235, 235, 235)}
EYES = {"brown": (90, 50, 20), "blue": (40, 110, 230), "green": (30, 150, 70)}
HEADS = ("round", "oval", "square")
ACCESSORIES = ("none", "hat", "glasses", "bow")
SCENES = {  # sky/top colour, ground colour, horizon as a fraction of the height
    "sky": ((120, 180, 250), (150, 200, 255), 1.0),
    "grass": ((140, 200, 250), (60, 150, 60), 0.55),
    "beach": ((120, 190, 250), (230, 210, 150), 0.6),
    "city": ((170, 170, 180), (90, 90, 100), 0.65),
    "snow": ((200, 210, 225), (245, 245, 250), 0.6),
    "night": ((15, 20, 60), (30, 35, 50), 0.7),
}
MOTIONS = ("walk", "bob", "zoom", "pan")
DISTANCES = {
    "far": ("a far away photo of", 0.35),
    "medium": ("a photo of", 0.6),
    "close": ("a close up photo of", 0.95),
}


@dataclass(frozen=True)
class Character:
    identity: int
    head: str
    skin: str
    hair: str
    eyes: str
    accessory: str

    @property
    def traits(self) -> tuple[str, ...]:
        return self.head, self.skin, self.hair, self.eyes, self.accessory

    @property
    def description(self) -> str:
        """Every trait in words: "a person with pale skin, an oval face, red hair, blue eyes and a hat"."""
        return describe(trait_phrases(self, adjectives=False), adjectives=False)


@dataclass
class Render:
    image: Image.Image  # RGB
    mask: np.ndarray  # (H, W) bool: the character
    face: tuple[int, int, int, int]  # x, y, width, height
    scene: str


@cache
def character(identity: int) -> Character:
    """The traits of an identity: a pure function of its number. A held-out identity never
    shares all its traits with a base one, so learning it means learning something new, nor
    with an earlier held-out one, so no two in a lineup are twins."""
    pick = random.Random(identity * 7919 + 17)
    while True:
        traits = (pick.choice(HEADS), pick.choice(list(SKINS)), pick.choice(list(HAIRS)))
        who = Character(identity, *traits, pick.choice(list(EYES)), pick.choice(ACCESSORIES))
        if identity < HELD_OUT_START or who.traits not in taken_traits(identity):
            return who


def taken_traits(identity: int) -> frozenset[tuple[str, ...]]:
    """The traits a held-out `identity` may not have: the base identities' and earlier held-out ones'."""
    earlier = range(HELD_OUT_START, identity)
    return base_traits() | {character(other).traits for other in earlier}


@cache
def base_traits() -> frozenset[tuple[str, ...]]:
    return frozenset(character(identity).traits for identity in range(BASE_IDENTITIES))


def where(scene: str) -> str:
    """How captions place a scene: "in the sky", "on the beach"."""
    return f"{'in the' if scene == 'sky' else 'on the'} {scene}"


def trait_phrases(who: Character, adjectives: bool) -> list[str]:
    """Each trait as words after "with" ("red hair") or as an adjective before "person" ("red haired")."""
    if adjectives:
        phrases = [f"{who.skin} skinned", f"{who.head} faced", f"{who.hair} haired", f"{who.eyes} eyed"]
        accessory = f"{who.accessory} wearing"
    else:
        article = "an" if who.head[0] in "aeiou" else "a"
        phrases = [f"{who.skin} skin", f"{article} {who.head} face", f"{who.hair} hair", f"{who.eyes} eyes"]
        accessory = "glasses" if who.accessory == "glasses" else f"a {who.accessory}"
    return phrases if who.accessory == "none" else [*phrases, accessory]


def describe(phrases: list[str], adjectives: bool) -> str:
    """A person with these traits: "a red haired blue eyed person" or "a person with red hair and blue eyes"."""
    if adjectives:
        return " ".join(["a", *phrases, "person"])
    listed = ", ".join(phrases[:-1]) + f" and {phrases[-1]}" if len(phrases) > 1 else "".join(phrases)
    return f"a person with {listed}" if phrases else "a person"


def caption(who: Character, scene: str, distance: str = "medium", wording: random.Random | None = None) -> str:
    """A still's caption. With `wording`, a varied one for training: either form, traits in any order, half
    the time only some of them, so the text encoder learns to read each trait wherever it stands, the slot
    before "person" included (where an ID module's learned tokens go)."""
    if wording is None:
        return f"{DISTANCES[distance][0]} {who.description} {where(scene)}"
    adjectives = wording.random() < 0.5
    phrases = some_traits(who, adjectives, wording)
    return f"{DISTANCES[distance][0]} {describe(phrases, adjectives)} {where(scene)}"


def some_traits(who: Character, adjectives: bool, wording: random.Random) -> list[str]:
    """The character's trait phrases in a random order, half the time only some of them."""
    phrases = trait_phrases(who, adjectives)
    if wording.random() < 0.5:
        phrases = [phrase for phrase in phrases if wording.random() < 0.6]
    wording.shuffle(phrases)
    return phrases


def draw_scene(scene: str, size: int, seed: int) -> Image.Image:
    top, ground, horizon = SCENES[scene]
    pixels = np.zeros((size, size, 3), dtype=np.float32)
    line = int(size * horizon)
    pixels[:line], pixels[line:] = top, ground
    texture = np.random.default_rng(seed).normal(0, 6, (size, size, 1))  # a little grain, scene by scene
    return Image.fromarray(np.clip(pixels + texture, 0, 255).astype(np.uint8))


def draw_character(
    who: Character, canvas: Image.Image, center: tuple[float, float], height: float
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Draw the character (head on a body) of `height` pixels; returns its mask and face box."""
    draw = ImageDraw.Draw(canvas)
    mask_image = Image.new("L", canvas.size, 0)
    mask = ImageDraw.Draw(mask_image)
    cx, cy = center
    head = height * 0.32
    top = cy - height / 2
    body = (cx - head * 0.6, top + head * 0.9, cx + head * 0.6, top + height)
    skin, hair = SKINS[who.skin], HAIRS[who.hair]
    for target, colour in ((draw, (80, 80, 160)), (mask, 255)):
        target.rectangle(body, fill=colour)
    shape = {"round": (0.5, 0.5), "oval": (0.42, 0.5), "square": (0.5, 0.5)}[who.head]
    face_box = (cx - head * shape[0], top, cx + head * shape[0], top + head * shape[1] * 2)
    for target, colour in ((draw, skin), (mask, 255)):
        (target.rectangle if who.head == "square" else target.ellipse)(face_box, fill=colour)
    draw.pieslice((face_box[0], face_box[1] - head * 0.1, face_box[2], face_box[3] - head * 0.4), 180, 360, fill=hair)
    for side in (-1, 1):
        eye = (cx + side * head * 0.18, top + head * 0.5)
        radius = max(1.0, head * 0.07)
        draw.ellipse((eye[0] - radius, eye[1] - radius, eye[0] + radius, eye[1] + radius), fill=EYES[who.eyes])
    _draw_accessory(draw, who.accessory, face_box, head)
    left, upper, right, lower = face_box
    return np.asarray(mask_image) > 0, (round(left), round(upper), round(right - left), round(lower - upper))


def _draw_accessory(draw: ImageDraw.ImageDraw, accessory: str, face: tuple, head: float) -> None:
    left, top, right, _ = face
    if accessory == "hat":
        draw.rectangle((left - head * 0.1, top - head * 0.25, right + head * 0.1, top + head * 0.05), fill=(40, 40, 40))
    elif accessory == "glasses":
        y = top + head * 0.5
        draw.line((left + head * 0.1, y, right - head * 0.1, y), fill=(10, 10, 10), width=max(1, int(head * 0.06)))
    elif accessory == "bow":
        x, y = right - head * 0.1, top + head * 0.1
        draw.polygon(
            [(x, y), (x + head * 0.25, y - head * 0.15), (x + head * 0.25, y + head * 0.15)], fill=(230, 60, 150)
        )


def render(
    who: Character, scene: str, size: int = 64, scale: float = 0.6, offset: tuple[float, float] = (0, 0), seed: int = 0
) -> Render:
    """One still of a character `scale` x size tall in a scene; `offset` moves it (fractions of the size)."""
    image = draw_scene(scene, size, seed)
    height = size * scale
    center = (size * (0.5 + offset[0]), size * (0.55 + offset[1]))
    mask, face = draw_character(who, image, center, height)
    return Render(image, mask, face, scene)


@dataclass
class GroupRender:
    """A still of several characters: each one's mask (what of it is visible) and face box, left to right."""

    image: Image.Image  # RGB
    masks: list[np.ndarray]  # (H, W) bool per character
    faces: list[tuple[int, int, int, int]]  # x, y, width, height per character
    scene: str
    caption: str  # names each character, left to right


def render_group(
    people: list[Character],
    scene: str,
    size: int = 64,
    distance: str = "medium",
    seed: int = 0,
    shift: float = 0.0,
    wording: random.Random | None = None,
) -> GroupRender:
    """Two or three characters side by side at `distance`, each centred in its own equal upright strip in
    the order given (magicme's automatic layout for as many identities), all moved right by `shift` (a
    fraction of the size: a camera pan); the caption names each, left to right (`wording` as in `caption`)."""
    if not 2 <= len(people) <= 3:
        raise ValueError(f"a group is two or three characters, got {len(people)}")
    image = draw_scene(scene, size, seed)
    masks, faces = [], []
    for index, who in enumerate(people):
        center = (size * ((index + 0.5) / len(people) + shift), size * 0.55)
        mask, face = draw_character(who, image, center, size * DISTANCES[distance][1])
        masks = [earlier & ~mask for earlier in masks] + [mask]  # a later character hides what it covers
        faces.append(face)
    return GroupRender(image, masks, faces, scene, group_caption(people, scene, distance, wording))


def group_caption(
    people: list[Character], scene: str, distance: str = "medium", wording: random.Random | None = None
) -> str:
    """A group's caption, left to right: "a photo of a person with ... and a red haired person on the grass".
    With `wording`, each is described as `caption` varies one: either form, some traits, any order."""
    if wording is None:
        names = [who.description for who in people]
    else:
        adjectives = [wording.random() < 0.5 for _ in people]
        names = [describe(some_traits(who, form, wording), form) for who, form in zip(people, adjectives, strict=True)]
    return f"{DISTANCES[distance][0]} {' and '.join(names)} {where(scene)}"


def photo_plan(identity: int, count: int = 5, scene: str | None = None) -> list[tuple[str, str, tuple[float, float]]]:
    """Where, how far and how off-centre each of an identity's photos is taken: (scene, distance, offset)."""
    pick = random.Random(identity)
    plan = []
    for _ in range(count):
        where_taken = pick.choice(list(SCENES)) if scene is None else scene
        distance = pick.choice(list(DISTANCES))
        plan.append((where_taken, distance, (pick.uniform(-0.15, 0.15), pick.uniform(-0.05, 0.05))))
    return plan


def identity_photos(identity: int, count: int = 5, size: int = 64, scene: str | None = None) -> list[Render]:
    """A held-out identity's "photos": varied distance and place, in varied scenes or all in `scene`."""
    who = character(identity)
    return [
        render(who, where_taken, size, DISTANCES[distance][1], offset, seed=identity * 100 + index)
        for index, (where_taken, distance, offset) in enumerate(photo_plan(identity, count, scene))
    ]


def write_identity_photos(folder: Path, identity: int, count: int = 5, scene: str | None = None) -> list[Render]:
    """Save an identity's photos as PNGs with their ground-truth masks beside them (`--masks files`)."""
    folder.mkdir(parents=True, exist_ok=True)
    shots = identity_photos(identity, count, scene=scene)
    for index, shot in enumerate(shots):
        shot.image.save(folder / f"photo-{index}.png")
        Image.fromarray(shot.mask.astype(np.uint8) * 255).save(folder / f"photo-{index}{MASK_SUFFIX}")
    return shots


def clip(who: Character, scene: str, motion: str, frames: int = 8, size: int = 64, seed: int = 0) -> list[Render]:
    """A short clip of the character moving: walking across, bobbing, zooming in, or the camera panning."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; choose one of {MOTIONS}")
    renders = []
    for t in np.linspace(0, 1, frames):
        offset, scale = (0.0, 0.0), DISTANCES["medium"][1]
        if motion == "walk":
            offset = (-0.25 + 0.5 * t, 0.02 * np.sin(8 * np.pi * t))
        elif motion == "bob":
            offset = (0.0, 0.06 * np.sin(2 * np.pi * t))
        elif motion == "pan":
            offset = (0.2 - 0.4 * t, 0.0)
        else:  # zoom: from far away to close up
            scale = DISTANCES["far"][1] + (DISTANCES["close"][1] - DISTANCES["far"][1]) * t
        renders.append(render(who, scene, size, float(scale), offset, seed))
    return renders
