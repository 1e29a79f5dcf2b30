"""Tiled VCD: upscale a video, then denoise it tile by tile as video at low strength.

Tiles overlap; each tile's result is weighted by ramps across its overlaps and the
weights are normalised to sum to one at every pixel, so no seam shows and a denoiser
that returns its input gives back the frames exactly. Model memory is bounded by the
tile size, not the frame size.
"""

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from magicme.errors import SettingError
from magicme.io.video import from_uint8, resize_frames, scaled_size, to_uint8
from magicme.settings import UpscaleSettings
from magicme.types import Denoiser, Frames, Latents, NoiseSource, Place
from magicme.v2v.batches import denoise_grouped
from magicme.v2v.windows import axis_ramps, spread


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Origins of ceil(length / tile) windows of `tile + overlap` pixels, evenly spread over [0, length)
    on multiples of `align` (the latent scale, so each tile's noise is a crop of the clip's).

    As in the reference workflow (tiles of 512 padded by 32 px), the tile count is set by the
    tile size and each window is `overlap` pixels larger, so neighbours share at least that.
    """
    if not 0 <= overlap < tile:
        raise SettingError("overlap", f"must be in [0, tile), got overlap {overlap} for tile {tile}")
    if (tile + overlap) % align:
        raise SettingError("tile", f"tile + overlap ({tile + overlap} px) must be a multiple of {align}")
    window = min(length, tile + overlap)
    return spread(length, window, math.ceil(length / tile) if length > window else 1, align)


def tile_weights(
    height: int, width: int, tile: int, overlap: int, align: int = 1
) -> list[tuple[slice, slice, torch.Tensor]]:
    """Every tile's (rows, columns, weight) with weights normalised to sum to one at each pixel."""
    tile_h, tile_w = min(tile + overlap, height), min(tile + overlap, width)
    ys, xs = tile_starts(height, tile, overlap, align), tile_starts(width, tile, overlap, align)
    tiles = [
        (slice(y, y + tile_h), slice(x, x + tile_w), ramp_y[:, None] * ramp_x[None, :])
        for y, ramp_y in zip(ys, axis_ramps(ys, tile_h), strict=True)
        for x, ramp_x in zip(xs, axis_ramps(xs, tile_w), strict=True)
    ]
    total = torch.zeros(height, width)
    for rows, columns, weight in tiles:
        total[rows, columns] += weight
    return [(rows, columns, weight / total[rows, columns]) for rows, columns, weight in tiles]


def denoise_tiled(
    frames: Frames,
    denoise: Denoiser | None,
    noise: Latents,
    tile: int = 512,
    overlap: int = 64,
    batch: int = 1,
    denoiser_for: Callable[[Place], Denoiser] | None = None,
) -> Frames:
    """Run `denoise` over overlapping video tiles, blended seamlessly.

    Args:
        frames: the clip, (F, 3, H, W) floats in [0, 1].
        denoise: re-noises and denoises a stack of tiles (B, F, 3, tile + overlap, tile + overlap) with
            their noise; None when `denoiser_for` picks every tile's.
        noise: the clip's one noise field, (1, C, F, H / s, W / s); each tile is re-noised with the
            crop of it under the tile, so overlapping tiles start from the same noise where they overlap.
        tile: each tile's share of the frame in pixels; `tile + overlap` must be a multiple of s.
        overlap: pixels each tile extends into its neighbours.
        batch: tiles per denoiser call.
        denoiser_for: with several identities, a tile's denoiser from its place (x0, y0, x1, y1 as
            fractions of the frame): its prompt names the identities the tile overlaps. By default
            `denoise` for every tile.

    Returns:
        frames of the input's shape.
    """
    if denoise is None and denoiser_for is None:
        raise ValueError("denoise_tiled needs a denoiser or denoiser_for")
    scale = frames.shape[-1] // noise.shape[-1]
    tiles = tile_weights(*frames.shape[-2:], tile, overlap, align=scale)
    crops = [frames[..., rows, columns] for rows, columns, _ in tiles]
    noises = [
        noise[..., rows.start // scale : rows.stop // scale, columns.start // scale : columns.stop // scale]
        for rows, columns, _ in tiles
    ]
    result = torch.zeros_like(frames)  # (F, 3, H, W)
    height, width = frames.shape[-2:]
    places = [(c.start / width, r.start / height, c.stop / width, r.stop / height) for r, c, _ in tiles]
    denoisers = [denoise if denoiser_for is None else denoiser_for(place) for place in places]
    denoised = denoise_grouped(denoisers, crops, noises, batch, "Tiled VCD tiles")
    for (rows, columns, weight), tile_frames in zip(tiles, denoised, strict=True):
        result[..., rows, columns] += tile_frames * weight
    return result


def tiled_vcd(
    frames: Frames,
    denoise: Denoiser | None,
    noise: NoiseSource,
    settings: UpscaleSettings,
    denoiser_for: Callable[[Place], Denoiser] | None = None,
) -> Frames:
    """Tiled VCD: upscale, denoise tile by tile with the clip's noise, sharpen.

    Args:
        frames: the clip, (F, 3, H, W) floats in [0, 1].
        denoise: the stage's denoiser (`make_denoiser` with the upscale settings); None when
            `denoiser_for` picks every tile's.
        noise: draws the clip's noise field (`NoiseField.draw`), once, at the upscaled size.
        settings: factor, upscaler, tile, overlap, tiles per denoiser call and sharpening.
        denoiser_for: with several identities, each tile's denoiser from its place (see `denoise_tiled`).

    Returns:
        frames (F, 3, H', W'), H' and W' the upscaled sizes rounded to multiples of 8.
    """
    upscaled = upscale_frames(frames, settings.factor, settings.upscaler_model)
    field = noise(*upscaled.shape[:1], *upscaled.shape[-2:])
    tiles = (settings.tile, settings.overlap, settings.crop_batch, denoiser_for)
    denoised = denoise_tiled(upscaled, denoise, field, *tiles)
    return sharpen(denoised, settings.sharpen)


def upscale_and_sharpen(frames: Frames, settings: UpscaleSettings) -> Frames:
    """The upscale without Tiled VCD (strength 0, and the baseline Tiled VCD is measured against)."""
    return sharpen(upscale_frames(frames, settings.factor, settings.upscaler_model), settings.sharpen)


def upscale_frames(frames: torch.Tensor, factor: float, model_path: str | None = None) -> torch.Tensor:
    """Lanczos by default; an ESRGAN-family model file through spandrel when one is given."""
    if model_path:
        return _upscale_with_model(frames, factor, Path(model_path))
    height, width = scaled_size(frames, factor)
    resized = [Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS) for frame in to_uint8(frames)]
    return from_uint8(np.stack([np.asarray(image) for image in resized]))


def _upscale_with_model(frames: torch.Tensor, factor: float, path: Path) -> torch.Tensor:
    try:
        from spandrel import ModelLoader
    except ImportError:
        raise ValueError("an upscaler model file needs spandrel: pip install spandrel") from None
    if not path.is_file():
        raise FileNotFoundError(f"upscaler model {path} does not exist")
    model = ModelLoader().load_from_file(str(path)).eval()
    with torch.no_grad():
        upscaled = torch.cat([model(frame[None]) for frame in frames]).clamp(0, 1)
    return resize_frames(upscaled, scaled_size(frames, factor))


def sharpen(frames: torch.Tensor, amount: float) -> torch.Tensor:
    """Contrast-adaptive sharpening (AMD FidelityFX CAS): sharpens less where contrast is already high."""
    if amount <= 0:
        return frames
    padded = torch.nn.functional.pad(frames, (1, 1, 1, 1), mode="replicate")
    north, south = padded[..., :-2, 1:-1], padded[..., 2:, 1:-1]
    west, east = padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]
    cross = torch.stack([frames, north, south, west, east])
    low, high = cross.min(dim=0).values, cross.max(dim=0).values
    adaptive = (torch.minimum(low, 1 - high) / high.clamp(min=1e-5)).clamp(0, 1).sqrt()
    weight = -adaptive / (8 - 3 * amount)  # CAS: peak between -1/8 (amount 0) and -1/5 (amount 1)
    return (((north + south + west + east) * weight + frames) / (1 + 4 * weight)).clamp(0, 1)
