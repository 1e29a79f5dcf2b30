"""The ID module's augmentations (Magic-Me, section 3.1), applied alike to a photo and its mask.

"paper", per sample: centre square crop, horizontal flip, a small rotation (normal, sigma
10 degrees), then 2/3 of the time a zoom out to 1/3..1 of the canvas at a random place on
black, captioned "a far away " or "very small ", otherwise a zoom in of 1.2..1.4x,
captioned "zoomed in " or "close up ". Every such sample is new pixels, so the VAE encodes
it again at every step. "flip" (centre square, mirrored half the time) and "none" (centre
square) give each photo at most two views, which training encodes once and reuses
(`magicme.identity.latent_cache`). All randomness comes from one torch.Generator, so a run
resumed from a checkpoint draws exactly what an uninterrupted run would have.
"""

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

ZOOM_OUT_RATE = 2 / 3
ZOOM_OUT_RANGE = (1 / 3, 1.0)
ZOOM_IN_RANGE = (1.2, 1.4)
ROTATION_SIGMA_DEGREES = 10.0
FAR_PREFIXES = ("a far away ", "very small ")
NEAR_PREFIXES = ("zoomed in ", "close up ")


@dataclass
class Sample:
    pixels: torch.Tensor  # (3, S, S) in [-1, 1]
    mask: torch.Tensor  # (1, S, S) in {0, 1}
    caption_prefix: str
    mirrored: bool | None  # for "flip" and "none": which of the photo's two views this is; None: a new view


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _choice(generator: torch.Generator, options: tuple[str, ...]) -> str:
    return options[int(torch.randint(len(options), (), generator=generator))]


def _square(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    return ImageOps.fit(image, (size, size), method=resample, centering=(0.5, 0.5))


def _rescale(pair: list[Image.Image], size: int, generator: torch.Generator) -> tuple[list[Image.Image], str]:
    """Zoom out onto a black canvas, or zoom in and crop; returns the pair and the caption prefix."""
    resamples = (Image.Resampling.BICUBIC, Image.Resampling.NEAREST)
    if _uniform(generator) < ZOOM_OUT_RATE:
        scaled = max(1, round(size * _uniform(generator, *ZOOM_OUT_RANGE)))
        left = int(torch.randint(size - scaled + 1, (), generator=generator))
        top = int(torch.randint(size - scaled + 1, (), generator=generator))
        canvases = []
        for image, resample in zip(pair, resamples, strict=True):
            canvas = Image.new(image.mode, (size, size), 0)
            canvas.paste(image.resize((scaled, scaled), resample), (left, top))
            canvases.append(canvas)
        return canvases, _choice(generator, FAR_PREFIXES)
    scaled = round(size * _uniform(generator, *ZOOM_IN_RANGE))
    left = int(torch.randint(scaled - size + 1, (), generator=generator))
    top = int(torch.randint(scaled - size + 1, (), generator=generator))
    box = (left, top, left + size, top + size)
    crops = [image.resize((scaled, scaled), r).crop(box) for image, r in zip(pair, resamples, strict=True)]
    return crops, _choice(generator, NEAR_PREFIXES)


def augment(image: Image.Image, mask: np.ndarray, size: int, generator: torch.Generator, mode: str = "paper") -> Sample:
    """One training sample from an RGB photo and its (H, W) bool subject mask, augmented as `mode` says."""
    mask_image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    pair = [_square(image, size, Image.Resampling.BICUBIC), _square(mask_image, size, Image.Resampling.NEAREST)]
    mirrored = mode != "none" and _uniform(generator) < 0.5
    if mirrored:
        pair = [ImageOps.mirror(item) for item in pair]
    if mode != "paper":
        return _sample(pair, "", mirrored)
    angle = torch.randn((), generator=generator).item() * ROTATION_SIGMA_DEGREES
    pair = [
        pair[0].rotate(angle, Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)),
        pair[1].rotate(angle, Image.Resampling.NEAREST, fillcolor=0),
    ]
    rescaled, prefix = _rescale(pair, size, generator)
    return _sample(rescaled, prefix, None)


def _sample(pair: list[Image.Image], prefix: str, mirrored: bool | None) -> Sample:
    image, mask = pair
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    subject = torch.from_numpy(np.asarray(mask) > 127).float()[None]
    return Sample(pixels, subject, prefix, mirrored)
