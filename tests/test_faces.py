import dataclasses

import numpy as np
import torch

from magicme.t2v.noise_prior import NoiseField
from magicme.v2v.faces import (
    crop_region,
    feather_mask,
    fill_missing,
    link_tracks,
    opencv_face_detector,
    owner_of,
    refine_faces,
)

NOISE = NoiseField(gamma=0.1, seed=0).draw


def test_default_detector_finds_the_astronaut_and_nothing_in_noise(astronaut) -> None:
    faces = opencv_face_detector(np.asarray(astronaut.image))
    assert len(faces) == 1
    x, y, w, h = faces[0]
    assert x < 230 < x + w and y < 120 < y + h, "the box must hold her face"
    noise = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    assert opencv_face_detector(noise) == []


def test_tracks_link_faces_fill_misses_and_drop_flukes() -> None:
    moving = [(100 + 4 * t, 50, 40, 40) for t in range(8)]
    detections = [[box] for box in moving]
    detections[3], detections[6] = [], []  # the detector missed two frames
    detections[5] = [moving[5], (300, 300, 30, 30)]  # a one-frame false positive
    detections = [[*boxes, (10, 200, 60, 60)] for boxes in detections]  # a second, larger face throughout
    tracks = link_tracks(detections)
    assert len(tracks) == 2, "two faces; the fluke seen in 1 of 8 frames is dropped"
    assert tracks[0][0] == (10, 200, 60, 60), "largest face first"
    filled = fill_missing(tracks[1])
    assert filled[3] in (moving[2], moving[4]) and filled[6] in (moving[5], moving[7])
    assert [filled[t] for t in (0, 1, 2, 4, 5, 7)] == [moving[t] for t in (0, 1, 2, 4, 5, 7)]


def test_crop_region_covers_every_box_with_context() -> None:
    boxes = [(100 + 4 * t, 50, 40, 40) for t in range(8)]
    x, y, side = crop_region(boxes, crop_factor=3, height=256, width=512)
    for bx, by, bw, bh in boxes:
        assert x <= bx and y <= by and bx + bw <= x + side and by + bh <= y + side
    assert side == (128 + 40 - 100) + 2 * 40
    assert y >= 0 and y + side <= 256, "the region stays inside the frame"
    assert crop_region(boxes, crop_factor=30, height=256, width=512)[2] == 256


def test_paste_back_changes_nothing_outside_the_feathered_box() -> None:
    frames = torch.rand(4, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    box = (60, 40, 24, 24)
    refined = refine_faces(frames, lambda crop, noise: 1 - crop, NOISE, detector=lambda frame: [box], guide_size=64)
    x, y, side = crop_region([box] * 4, 3.0, 128, 160)
    changed = (refined != frames).any(dim=(0, 1))
    outside = torch.ones_like(changed)
    outside[y + 1 : y + side - 1, x + 1 : x + side - 1] = False  # the region's border has weight 0 too
    assert not changed[outside].any()
    assert changed[y + side // 2, x + side // 2], "the face itself is refined"
    mask = feather_mask(side, 5)
    assert mask[0].max() == 0 and mask[side // 2, side // 2] == 1


def test_no_face_passes_the_video_through(caplog) -> None:
    frames = torch.rand(3, 3, 64, 64)
    assert refine_faces(frames, lambda crop, noise: crop * 0, NOISE, detector=lambda frame: []) is frames
    assert "no face found in any frame" in caplog.text


def test_largest_only_refines_one_face() -> None:
    frames = torch.rand(2, 3, 128, 256, generator=torch.Generator().manual_seed(1))
    faces = [(20, 20, 30, 30), (180, 30, 20, 20)]
    calls = []
    refine_faces(
        frames, lambda crop, noise: calls.append(1) or crop, NOISE, detector=lambda frame: faces, guide_size=64
    )
    refine_faces(frames, lambda c, n: calls.append(2) or c, NOISE, detector=lambda f: faces, largest_only=True)
    assert calls == [1, 1, 2]


def test_each_face_is_renoised_with_a_draw_of_the_clips_prior_at_the_guide_size() -> None:
    frames = torch.rand(4, 3, 128, 256, generator=torch.Generator().manual_seed(1))
    seen = []
    faces = [(20, 20, 30, 30), (180, 30, 20, 20)]
    refine_faces(
        frames, lambda crop, noise: seen.append(noise) or crop, NoiseField(0.3, 5).draw, lambda f: faces, guide_size=64
    )
    expected = NoiseField(0.3, 5)
    assert [tuple(noise.shape) for noise in seen] == [(1, 4, 4, 8, 8)] * 2
    assert all(torch.equal(noise, expected.draw(4, 64, 64)) for noise in seen), "the seed's draws, in track order"


def test_face_crops_go_to_the_denoiser_in_batches_and_refine_alike() -> None:
    frames = torch.rand(4, 3, 128, 256, generator=torch.Generator().manual_seed(1))
    faces = [(20, 20, 30, 30), (180, 30, 20, 20), (120, 80, 24, 24)]
    stacks = []

    def invert(crops: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        stacks.append((crops.shape[0], noise.shape[0]))
        return 1 - crops

    one_by_one = refine_faces(frames, invert, NOISE, lambda frame: faces, guide_size=64)
    batched = refine_faces(frames, invert, NOISE, lambda frame: faces, guide_size=64, batch=2)
    assert stacks == [(1, 1)] * 3 + [(2, 2), (1, 1)]
    assert torch.equal(batched, one_by_one)


def test_face_detector_choices_come_from_the_registry() -> None:
    from magicme import registry
    from magicme.settings import FaceSettings

    field = next(f for f in dataclasses.fields(FaceSettings) if f.name == "detector")
    assert field.metadata["choices"] == registry.face_detector_names()
    assert {"opencv", "world"} <= set(registry.face_detector_names()), "the world plug-in registers its locator"


def test_a_face_the_crop_would_not_enlarge_is_left_unless_every_face_is_asked_for() -> None:
    frames = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    close_up, small = (8, 8, 40, 40), (24, 24, 8, 8)  # crops of 64 and 24 px for a 64 px guide
    for box, kept in ((close_up, True), (small, False)):
        refined = refine_faces(
            frames, lambda crop, noise: 1 - crop, NOISE, lambda frame, b=box: [b], guide_size=64, min_enlargement=1.2
        )
        assert torch.equal(refined, frames) == kept
    every = refine_faces(frames, lambda crop, noise: 1 - crop, NOISE, lambda frame: [close_up], guide_size=64)
    assert not torch.equal(every, frames)


def test_each_face_is_refined_as_the_identity_whose_region_it_overlaps_and_others_are_left() -> None:
    """Three faces: one in alice's half, one in bob's, one in neither region; each identity's denoiser
    gets its own faces (in batches), and the third face is left as it was."""
    frames = torch.rand(4, 3, 128, 384, generator=torch.Generator().manual_seed(1))
    faces = [(40, 40, 30, 30), (220, 40, 30, 30), (330, 90, 20, 20)]
    regions = {name: torch.zeros(4, 128, 384, dtype=torch.bool) for name in ("alice", "bob")}
    regions["alice"][:, :, :150] = True
    regions["bob"][:, :, 150:300] = True
    assert [owner_of([face] * 4, regions) for face in faces] == ["alice", "bob", None]
    seen: dict[str, list[int]] = {"alice": [], "bob": []}

    def denoiser(name: str, shade: float):
        return lambda crops, noise: seen[name].append(crops.shape[0]) or torch.full_like(crops, shade)

    denoisers = {"alice": denoiser("alice", 0.0), "bob": denoiser("bob", 1.0)}
    refined = refine_faces(
        frames,
        denoisers["alice"],
        NOISE,
        lambda frame: faces,
        guide_size=64,
        min_enlargement=1,
        denoiser_for=lambda boxes: denoisers.get(owner_of(boxes, regions)),
    )
    assert seen == {"alice": [1], "bob": [1]}
    assert refined[..., 55, 55].max() == 0 and refined[..., 55, 235].min() == 1  # each face its identity's
    assert torch.equal(refined[..., 100, 340], frames[..., 100, 340]), "the face in no region is left"
