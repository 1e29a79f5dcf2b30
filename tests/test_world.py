import itertools
import random
import re

import numpy as np
import pytest

from magicme.world.scenes import (
    BASE_IDENTITIES,
    HELD_OUT_START,
    SCENES,
    caption,
    character,
    clip,
    identity_photos,
    render,
)


def test_the_world_is_the_same_every_time() -> None:
    first, again = identity_photos(HELD_OUT_START + 3), identity_photos(HELD_OUT_START + 3)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert np.array_equal(a.mask, b.mask) and a.face == b.face
    assert character(7) == character(7)


def test_identities_are_distinct_and_held_out_ones_are_new() -> None:
    base = [character(identity).traits for identity in range(BASE_IDENTITIES)]
    assert len(set(base)) > 0.9 * BASE_IDENTITIES, "base identities should rarely look alike"
    held_out = [character(HELD_OUT_START + index).traits for index in range(50)]
    assert not set(held_out) & set(base), "a held-out identity never repeats a base identity's traits"
    assert len(set(held_out)) == len(held_out), "no two held-out identities are twins: a lineup tells them apart"


def test_masks_and_face_boxes_are_ground_truth() -> None:
    for scene in SCENES:
        still = render(character(11), scene, size=96)
        x, y, width, height = still.face
        assert still.mask[y + height // 2, x + width // 2], "the face centre is on the subject"
        assert 0.02 < still.mask.mean() < 0.5
        assert not still.mask[:, :5].any(), "the scene's edges are background"


def test_photos_vary_and_clips_move() -> None:
    photos = identity_photos(HELD_OUT_START, count=5)
    assert len({photo.mask.sum() for photo in photos}) > 1, "photos vary in distance"
    walk = clip(character(2), "grass", "walk", frames=6)
    centres = [np.nonzero(frame.mask)[1].mean() for frame in walk]
    assert all(b > a for a, b in itertools.pairwise(centres)), "walking moves the character right"
    zoom = clip(character(2), "city", "zoom", frames=6)
    assert all(b.mask.sum() > a.mask.sum() for a, b in itertools.pairwise(zoom)), "zooming in grows it"
    with pytest.raises(ValueError, match="unknown motion 'spin'"):
        clip(character(2), "city", "spin")


def test_captions_name_the_traits_and_the_scene() -> None:
    who = character(HELD_OUT_START + 2)
    text = caption(who, "beach", "far")
    assert text.startswith("a far away photo of") and who.hair in text and text.endswith("on the beach")


def test_training_captions_vary_the_wording_but_name_only_the_characters_traits() -> None:
    who = character(5)
    captions = [caption(who, "city", "close", random.Random(seed)) for seed in range(200)]
    assert len(set(captions)) > 50, "forms, orders and subsets vary"
    assert any(text.startswith("a close up photo of a person with") for text in captions)
    assert any(re.search(r"haired .*person on the city$", text) for text in captions), "adjectives before 'person'"
    trait_of = {"skin": who.skin, "face": who.head, "hair": who.hair, "eye": who.eyes}
    for text in captions:
        for value, noun in re.findall(r"(\w+) (skin|face|hair|eye)(?:ned|ed|d|s)?\b", text):
            assert value == trait_of[noun], text
    assert captions == [caption(who, "city", "close", random.Random(seed)) for seed in range(200)], "deterministic"


@pytest.mark.parametrize("count", [2, 3])
def test_a_group_stands_left_to_right_with_a_mask_and_face_box_each_and_a_caption_naming_each(count: int) -> None:
    from magicme.world.scenes import REPORT_SPLIT, render_group

    people = [character(identity) for identity in REPORT_SPLIT[:count]]
    group = render_group(people, "grass", seed=1)
    assert len(group.masks) == len(group.faces) == count
    for index, ((x, y, w, h), mask) in enumerate(zip(group.faces, group.masks, strict=True)):
        strip = (64 * index / count, 64 * (index + 1) / count)
        assert strip[0] <= x + w / 2 < strip[1], "each face in its own strip, left to right"
        assert mask[y + h // 2, x + w // 2], "the face centre is the character's"
    for first, second in itertools.combinations(group.masks, 2):
        assert not (first & second).any(), "no pixel belongs to two characters"
    described = [group.caption.index(who.description) for who in people]
    assert described == sorted(described) and group.caption.endswith("on the grass"), "named left to right"
    with pytest.raises(ValueError, match="two or three"):
        render_group(people[:1], "grass")
    close = render_group(people, "grass", distance="close", seed=1)
    assert close.caption.startswith("a close up photo of ") and close.faces[0][3] > group.faces[0][3]
    moved = render_group(people, "grass", seed=1, shift=0.05)
    assert [face[0] for face in moved.faces] == [face[0] + 3 for face in group.faces], "a pan moves everyone alike"


def test_group_captions_for_training_vary_each_description_and_keep_the_order() -> None:
    from magicme.world.scenes import REPORT_SPLIT, group_caption

    people = [character(identity) for identity in REPORT_SPLIT[:2]]
    captions = [group_caption(people, "snow", "medium", random.Random(seed)) for seed in range(100)]
    assert all(text.startswith("a photo of a ") and text.endswith(" on the snow") for text in captions)
    assert all(text.count("person") == 2 for text in captions) and len(set(captions)) > 50
    assert captions == [group_caption(people, "snow", "medium", random.Random(seed)) for seed in range(100)]
