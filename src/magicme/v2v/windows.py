"""Overlapping windows over one axis (frames in time, pixels in space) and their blend weights.

Tiled VCD lays tiles over the frame and identity editing lays 16-frame windows over a long
clip; both blend neighbours with ramps across their overlap, normalised to sum to one, so
no seam shows and a denoiser that returns its input gives back the clip exactly.
"""

import math

import torch

from magicme.types import Denoiser, Frames, Latents
from magicme.v2v.batches import denoise_in_batches


def spread(length: int, window: int, count: int, align: int = 1) -> list[int]:
    """Origins of `count` windows of `window` cells spread evenly to cover [0, length), on multiples of `align`."""
    if count == 1:
        return [0]
    return [round(index * (length - window) / (count - 1) / align) * align for index in range(count)]


def window_starts(length: int, window: int, overlap: int) -> list[int]:
    """The fewest windows of a fixed size whose neighbours share at least `overlap` (frames, in time)."""
    if length <= window:
        return [0]
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got overlap {overlap} for window {window}")
    return spread(length, window, math.ceil((length - overlap) / (window - overlap)))


def axis_ramps(starts: list[int], size: int) -> list[torch.Tensor]:
    """Per window, weights along one axis: rising across the overlap with the previous window,
    falling across the overlap with the next, 1 elsewhere; never 0, so every cell is covered."""
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


def denoise_in_windows(
    frames: Frames, denoise: Denoiser, noise: Latents, window: int, overlap: int, batch: int = 1
) -> Frames:
    """Denoise a long clip `window` frames at a time, overlaps blended.

    Args:
        frames: the clip, (F, 3, H, W) floats in [0, 1].
        denoise: re-noises and denoises a stack of windows (B, window, 3, H, W) with their noise.
        noise: the clip's noise field (1, C, F, H / s, W / s); each window gets its frames' part.
        window: frames denoised together (the motion module's window).
        overlap: frames shared by consecutive windows.
        batch: windows per denoiser call.

    Returns:
        frames of the input's shape.
    """
    starts = window_starts(frames.shape[0], window, overlap)
    size = min(window, frames.shape[0])
    parts = [slice(start, start + size) for start in starts]
    denoised = denoise_in_batches(
        denoise, [frames[p] for p in parts], [noise[:, :, p] for p in parts], batch, "windows"
    )
    result, total = torch.zeros_like(frames), torch.zeros(frames.shape[0])
    for part, ramp, window_frames in zip(parts, axis_ramps(starts, size), denoised, strict=True):
        result[part] += window_frames * ramp[:, None, None, None]
        total[part] += ramp
    return result / total[:, None, None, None]
