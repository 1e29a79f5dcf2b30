"""Face VCD: find the face through the clip, re-denoise it large, paste it back feathered.

A detector is any callable `frame (H, W, 3) uint8 -> list of (x, y, w, h)`. Detections are
linked into tracks across frames (one per face), missed frames are filled from their
nearest detected neighbour, and each track gets one square crop region for the whole clip
(its boxes' union grown by the crop factor), so the refined face does not jitter. The crop
is upscaled to the guide size, denoised as video with the identity prompt, scaled back
and blended with a mask that is 0 on the region's border: nothing outside it changes.
"""

import logging
from collections.abc import Callable

import numpy as np
import torch

from magicme.detection import opencv_face_detector, overlap
from magicme.io.video import resize_frames, to_uint8
from magicme.types import Box, Denoiser, FaceDetector, Frames, NoiseSource
from magicme.v2v.batches import denoise_grouped

log = logging.getLogger("magicme")

MIN_PRESENCE = 0.25  # a track must be seen in a quarter of the frames: drops one-frame false positives


def link_tracks(detections: list[list[Box]], min_presence: float = MIN_PRESENCE) -> list[list[Box | None]]:
    """Link per-frame boxes into per-face tracks (a box joins the track whose last box it overlaps most)."""
    tracks: list[list[Box | None]] = []
    for frame, boxes in enumerate(detections):
        for track in tracks:
            track.append(None)
        for box in sorted(boxes, key=lambda b: -b[2] * b[3]):
            last = [(next(b for b in reversed(t) if b), t) for t in tracks if t[frame] is None and any(t)]
            best = max(last, key=lambda item: overlap(item[0], box), default=None)
            if best and overlap(best[0], box) > 0.3:
                best[1][frame] = box
            else:
                tracks.append([None] * frame + [box])
    kept = [t for t in tracks if sum(b is not None for b in t) >= max(1, min_presence * len(detections))]
    return sorted(kept, key=lambda t: -np.median([b[2] * b[3] for b in t if b]))


def fill_missing(track: list[Box | None]) -> list[Box]:
    """Frames where the detector missed take the box of the nearest frame where it did not."""
    seen = [index for index, box in enumerate(track) if box is not None]
    return [track[min(seen, key=lambda s: abs(s - index))] for index in range(len(track))]


def crop_region(boxes: list[Box], crop_factor: float, height: int, width: int) -> tuple[int, int, int]:
    """One square (x, y, side) covering every box, with (crop_factor - 1) face sizes of context."""
    left, top = min(b[0] for b in boxes), min(b[1] for b in boxes)
    right, bottom = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    face = float(np.median([max(b[2], b[3]) for b in boxes]))
    side = int(min(max(right - left, bottom - top) + (crop_factor - 1) * face, height, width))
    x = int(np.clip((left + right) / 2 - side / 2, 0, width - side))
    y = int(np.clip((top + bottom) / 2 - side / 2, 0, height - side))
    return x, y, side


def owner_of(boxes: list[Box], regions: dict[str, torch.Tensor]) -> str | None:
    """The identity whose region a face overlaps most through the clip (regions: name -> (F, H, W)
    booleans), or None where it overlaps none."""
    overlaps = {}
    for name, masks in regions.items():
        overlaps[name] = sum(
            int(mask[y : y + h, x : x + w].sum()) for mask, (x, y, w, h) in zip(masks, boxes, strict=True)
        )
    best = max(overlaps, key=overlaps.get, default=None)
    return best if best is not None and overlaps[best] > 0 else None


def feather_mask(side: int, feather: int) -> torch.Tensor:
    """(side, side) blend weights: 0 on the border, rising over `feather` pixels to 1 inside."""
    edge = torch.arange(side).float()
    distance = torch.minimum(edge, side - 1 - edge)
    ramp = (distance / max(feather, 1)).clamp(0, 1)
    return torch.minimum(ramp[:, None], ramp[None, :])


def refine_faces(
    frames: Frames,
    denoise: Denoiser | None,
    noise: NoiseSource,
    detector: FaceDetector = opencv_face_detector,
    crop_factor: float = 3.0,
    guide_size: int = 512,
    feather: int = 5,
    largest_only: bool = False,
    min_enlargement: float = 1.0,
    batch: int = 1,
    denoiser_for: Callable[[list[Box]], Denoiser | None] | None = None,
) -> Frames:
    """Face VCD over a clip; a clip with no face comes back unchanged, with a warning.

    Args:
        frames: the clip, (F, 3, H, W) floats in [0, 1].
        denoise: re-noises and denoises a stack of crops (B, F, 3, guide_size, guide_size) with their
            noise; None when `denoiser_for` picks every face's.
        noise: draws the clip's noise (`NoiseField.draw`); each face track's crop is re-noised
            with the next draw at `guide_size` (its crop of the frame is seen at another scale).
        detector: one RGB uint8 frame (H, W, 3) -> its face boxes (x, y, w, h).
        crop_factor: the crop is this many face sizes wide.
        guide_size: the side, in pixels, the crop is denoised at (a multiple of 8).
        feather: blend width in pixels at the crop's edge.
        largest_only: refine only the largest face.
        min_enlargement: leave a face whose crop would be enlarged less than this to reach `guide_size`:
            Face VCD adds detail by redrawing a small face large; a face already at the guide size
            gains no resolution, and redrawing it only drifts from the clip. 1 or less: refine every face.
        batch: face crops per denoiser call.
        denoiser_for: with several identities, the denoiser of a face from its boxes through the
            clip (its identity's prompt), or None to leave that face; by default `denoise` for every face.

    Returns:
        frames of the input's shape; nothing outside the face regions changes.
    """
    if denoise is None and denoiser_for is None:
        raise ValueError("refine_faces needs a denoiser or denoiser_for")
    height, width = frames.shape[-2:]
    tracks = link_tracks([detector(frame) for frame in to_uint8(frames)])
    if not tracks:
        log.warning("no face found in any frame: the video passes through Face VCD unchanged")
        return frames
    regions = []
    for track in tracks[:1] if largest_only else tracks:
        boxes = fill_missing(track)
        x, y, side = crop_region(boxes, crop_factor, height, width)
        if min_enlargement > 1 and guide_size / side < min_enlargement:
            log.info(
                "Face VCD: a face whose %d px crop is near the guide size (%d px) is left as it is", side, guide_size
            )
            continue
        chosen = denoise if denoiser_for is None else denoiser_for(boxes)
        if chosen is None:
            log.info("Face VCD: a face in no identity's region is left as it is")
            continue
        regions.append((slice(y, y + side), slice(x, x + side), side, chosen))
    # every crop is cut from the clip as it came, so the faces do not depend on the order they are refined in
    crops = [resize_frames(frames[..., rows, columns], (guide_size, guide_size)) for rows, columns, _, _ in regions]
    noises = [noise(len(frames), guide_size, guide_size) for _ in regions]
    denoisers = [region[3] for region in regions]
    guides = denoise_grouped(denoisers, crops, noises, batch, "Face VCD faces")
    refined = frames.clone()
    for (rows, columns, side, _), guide in zip(regions, guides, strict=True):
        alpha = feather_mask(side, feather)
        refined[..., rows, columns] = (
            refined[..., rows, columns] * (1 - alpha) + resize_frames(guide, (side, side)) * alpha
        )
    return refined
