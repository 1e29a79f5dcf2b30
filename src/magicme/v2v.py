"""Video-to-video denoising, the engine of Face VCD, Tiled VCD and identity editing.

Each V2V stage is written against a `Denoiser`: a callable that takes frames
(F, 3, H, W) in [0, 1] and returns frames of the same shape. The real one re-noises the
clip to `strength` and denoises it as a video with AnimateDiff, sharing the T2V
pipeline's weights (`AnimateDiffVideoToVideoPipeline.from_pipe`); tests pass simpler ones.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline

from magicme.generation import loaded_identity_names
from magicme.identity import check_placeholders
from magicme.loading import make_scheduler
from magicme.video_io import to_uint8

Denoiser = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class DenoiseSettings:
    """How a V2V stage re-noises and denoises: the identity prompt and the strength."""

    prompt: str
    strength: float
    num_inference_steps: int = 20
    guidance_scale: float = 8.0
    negative_prompt: str = ""
    scheduler: str = "ddim"
    seed: int = 0


def make_denoiser(pipe: AnimateDiffPipeline, settings: DenoiseSettings) -> Denoiser:
    """A denoiser sharing `pipe`'s weights; each call uses the same seed, so tiles and windows match."""
    if not 0.0 < settings.strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {settings.strength}")
    if int(settings.num_inference_steps * settings.strength) < 1:
        needed = int(1 / settings.strength) + 1
        raise ValueError(
            f"{settings.num_inference_steps} steps at strength {settings.strength} leave no step to denoise; "
            f"use --num-inference-steps {needed} or more"
        )
    check_placeholders(settings.prompt, loaded_identity_names(pipe))
    video_pipe = AnimateDiffVideoToVideoPipeline.from_pipe(pipe)
    video_pipe.scheduler = make_scheduler(settings.scheduler, pipe.scheduler.config)

    def denoise(frames: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        height, width = frames.shape[-2:]
        if height % 8 or width % 8:
            raise ValueError(f"V2V frames must be multiples of 8 in size, got {width}x{height}")
        output = video_pipe(
            video=[Image.fromarray(frame) for frame in to_uint8(frames)],
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt or None,
            height=height,
            width=width,
            strength=settings.strength,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            generator=torch.Generator().manual_seed(settings.seed),
            output_type="pt",
        )
        return output.frames[0].float().clamp(0, 1).cpu()  # (F, 3, H, W)

    return denoise
