"""Tiled VCD: upscale a video, then denoise it tile by tile as video at low strength.

Tiles overlap; each tile's result is weighted by ramps across its overlaps and the
weights are normalised to sum to one at every pixel, so no seam shows and a denoiser
that returns its input gives back the frames exactly. Model memory is bounded by the
tile size, not the frame size.
"""

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from magicme.v2v import Denoiser


def spread(length: int, window: int, count: int) -> list[int]:
    """Origins of `count` windows of `window` pixels spread evenly to cover [0, length)."""
    if count == 1:
        return [0]
    return [round(index * (length - window) / (count - 1)) for index in range(count)]


def window_starts(length: int, window: int, overlap: int) -> list[int]:
    """The fewest windows of a fixed size whose neighbours share at least `overlap` (frames, in time)."""
    if length <= window:
        return [0]
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got overlap {overlap} for window {window}")
    return spread(length, window, math.ceil((length - overlap) / (window - overlap)))


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Origins of ceil(length / tile) windows of `tile + overlap` pixels, evenly spread over [0, length).

    As in the reference workflow (tiles of 512 padded by 32 px), the tile count is set by the
    tile size and each window is `overlap` pixels larger, so neighbours share at least that.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap {overlap} for tile {tile}")
    window = min(length, tile + overlap)
    return spread(length, window, math.ceil(length / tile) if length > window else 1)


def axis_ramps(starts: list[int], size: int) -> list[torch.Tensor]:
    """Per tile, weights along one axis: rising across the overlap with the previous tile,
    falling across the overlap with the next, 1 elsewhere; never 0, so every pixel is covered."""
    ramps = []
    for index, start in enumerate(starts):
        weight = torch.ones(size)
        if index > 0:
            shared = starts[index - 1] + size - start
            weight[:shared] = torch.minimum(weight[:shared], torch.arange(1, shared + 1) / (shared + 1))
        if index < len(starts) - 1:
            shared = start + size - starts[index + 1]
            weight[size - shared :] = torch.minimum(weight[size - shared :], torch.arange(shared, 0, -1) / (shared + 1))
        ramps.append(weight)
    return ramps


def tile_weights(height: int, width: int, tile: int, overlap: int) -> list[tuple[slice, slice, torch.Tensor]]:
    """Every tile's (rows, columns, weight) with weights normalised to sum to one at each pixel."""
    tile_h, tile_w = min(tile + overlap, height), min(tile + overlap, width)
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    tiles = [
        (slice(y, y + tile_h), slice(x, x + tile_w), ramp_y[:, None] * ramp_x[None, :])
        for y, ramp_y in zip(ys, axis_ramps(ys, tile_h), strict=True)
        for x, ramp_x in zip(xs, axis_ramps(xs, tile_w), strict=True)
    ]
    total = torch.zeros(height, width)
    for rows, columns, weight in tiles:
        total[rows, columns] += weight
    return [(rows, columns, weight / total[rows, columns]) for rows, columns, weight in tiles]


def denoise_tiled(frames: torch.Tensor, denoise: Denoiser, tile: int = 512, overlap: int = 64) -> torch.Tensor:
    """Run `denoise` over overlapping video tiles (F, 3, tile + overlap, tile + overlap), blended seamlessly."""
    result = torch.zeros_like(frames)  # (F, 3, H, W)
    for rows, columns, weight in tile_weights(*frames.shape[-2:], tile, overlap):
        result[..., rows, columns] += denoise(frames[..., rows, columns]) * weight
    return result


def upscale_frames(frames: torch.Tensor, factor: float, model_path: str | None = None) -> torch.Tensor:
    """Lanczos by default; an ESRGAN-family model file through spandrel when one is given."""
    if model_path:
        return _upscale_with_model(frames, factor, Path(model_path))
    height, width = frames.shape[-2:]
    size = (round(width * factor / 8) * 8, round(height * factor / 8) * 8)  # the VAE needs multiples of 8
    pixels = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    resized = [np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.LANCZOS)) for frame in pixels]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255


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
    height, width = frames.shape[-2:]
    size = (round(height * factor / 8) * 8, round(width * factor / 8) * 8)
    return torch.nn.functional.interpolate(upscaled, size=size, mode="bicubic", antialias=True).clamp(0, 1)


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
