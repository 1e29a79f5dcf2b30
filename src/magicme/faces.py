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

from magicme.v2v import Denoiser
from magicme.video_io import to_uint8

log = logging.getLogger("magicme")

Box = tuple[int, int, int, int]  # x, y, width, height
FaceDetector = Callable[[np.ndarray], list[Box]]
MIN_PRESENCE = 0.25  # a track must be seen in a quarter of the frames: drops one-frame false positives


def opencv_face_detector(frame: np.ndarray) -> list[Box]:
    """OpenCV's bundled Haar cascade: offline, CPU, no weights to fetch; frontal faces."""
    import cv2

    gray = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
    smallest = max(16, min(gray.shape) // 20)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=6, minSize=(smallest, smallest))
    return [tuple(int(v) for v in face) for face in faces]


def world_face_detector(frame: np.ndarray) -> list[Box]:
    """The miniature world's trained face locator (`magicme.instruments`), for the built-in world model."""
    from magicme.instruments import world_instruments

    return world_instruments().locate_faces(frame)


FACE_DETECTORS: dict[str, FaceDetector] = {"opencv": opencv_face_detector, "world": world_face_detector}


def _overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller box: 1 when one face box sits inside the other."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0, width) * max(0, height) / min(a[2] * a[3], b[2] * b[3])


def link_tracks(detections: list[list[Box]], min_presence: float = MIN_PRESENCE) -> list[list[Box | None]]:
    """Link per-frame boxes into per-face tracks (a box joins the track whose last box it overlaps most)."""
    tracks: list[list[Box | None]] = []
    for frame, boxes in enumerate(detections):
        for track in tracks:
            track.append(None)
        for box in sorted(boxes, key=lambda b: -b[2] * b[3]):
            last = [(next(b for b in reversed(t) if b), t) for t in tracks if t[frame] is None and any(t)]
            best = max(last, key=lambda item: _overlap(item[0], box), default=None)
            if best and _overlap(best[0], box) > 0.3:
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


def feather_mask(side: int, feather: int) -> torch.Tensor:
    """(side, side) blend weights: 0 on the border, rising over `feather` pixels to 1 inside."""
    edge = torch.arange(side).float()
    distance = torch.minimum(edge, side - 1 - edge)
    ramp = (distance / max(feather, 1)).clamp(0, 1)
    return torch.minimum(ramp[:, None], ramp[None, :])


def resize(frames: torch.Tensor, side: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(frames, size=(side, side), mode="bicubic", antialias=True).clamp(0, 1)


def refine_faces(
    frames: torch.Tensor,
    denoise: Denoiser,
    detector: FaceDetector = opencv_face_detector,
    crop_factor: float = 3.0,
    guide_size: int = 512,
    feather: int = 5,
    largest_only: bool = False,
) -> torch.Tensor:
    """Face VCD over a clip (F, 3, H, W); a clip with no face comes back unchanged, with a warning."""
    height, width = frames.shape[-2:]
    tracks = link_tracks([detector(frame) for frame in to_uint8(frames)])
    if not tracks:
        log.warning("no face found in any frame: the video passes through Face VCD unchanged")
        return frames
    refined = frames.clone()
    for track in tracks[:1] if largest_only else tracks:
        x, y, side = crop_region(fill_missing(track), crop_factor, height, width)
        crop = refined[..., y : y + side, x : x + side]
        face = resize(denoise(resize(crop, guide_size)), side)
        alpha = feather_mask(side, feather)
        refined[..., y : y + side, x : x + side] = crop * (1 - alpha) + face * alpha
    return refined
