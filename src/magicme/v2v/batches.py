"""Denoise a clip's crops (tiles, face crops, edit windows) several at a time.

Every crop a stage cuts from one clip has the same size, so `batch` of them can go through
the UNet as one batch: fewer, larger calls, which keep a GPU busy, for `batch` times the
activation memory. Each crop still gets its own noise, and the result is what denoising
it alone gives, up to the rounding of larger matrix products (tested).
"""

import torch
from tqdm.auto import tqdm

from magicme.types import Denoiser, Frames, Latents


def denoise_in_batches(
    denoise: Denoiser, clips: list[Frames], noises: list[Latents], batch: int, description: str
) -> list[Frames]:
    """Each clip (F, 3, H, W) denoised with its noise (1, C, F, h, w), `batch` clips per call.

    Args:
        denoise: the stage's denoiser, which takes a stack of clips and their stacked noise.
        clips: same-sized clips.
        noises: one noise per clip.
        batch: clips per call (1: one after another).
        description: the progress bar's label.

    Returns:
        the denoised clips, in order.
    """
    results: list[Frames] = []
    with tqdm(total=len(clips), desc=description, leave=False, disable=len(clips) == 1) as bar:
        for start in range(0, len(clips), batch):
            group = slice(start, start + batch)
            denoised = denoise(torch.stack(clips[group]), torch.cat(noises[group]))
            results += denoised.unbind(0)
            bar.update(len(denoised))
    return results


def denoise_grouped(
    denoisers: list[Denoiser], clips: list[Frames], noises: list[Latents], batch: int, description: str
) -> list[Frames]:
    """`denoise_in_batches` where each clip has its own denoiser (several identities: each face or
    tile with its identities' prompt): the clips of one denoiser go in batches together; the
    results come back in the clips' order."""
    results: list[Frames] = [torch.empty(0)] * len(clips)
    for denoise in dict.fromkeys(denoisers):
        mine = [index for index, own in enumerate(denoisers) if own is denoise]
        done = denoise_in_batches(denoise, [clips[i] for i in mine], [noises[i] for i in mine], batch, description)
        for index, clip in zip(mine, done, strict=True):
            results[index] = clip
    return results
