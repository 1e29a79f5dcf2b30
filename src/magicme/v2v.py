"""Video-to-video denoising, the engine of Face VCD, Tiled VCD and identity editing.

Each V2V stage is written against a `Denoiser`: a callable that takes frames
(F, 3, H, W) in [0, 1] and returns frames of the same shape. The real one re-noises the
clip to `strength` and denoises it as a video with AnimateDiff, sharing the T2V
pipeline's weights (`AnimateDiffVideoToVideoPipeline.from_pipe`); tests pass simpler ones.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline, DDIMInverseScheduler, DDIMScheduler

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


def check_strength(settings: DenoiseSettings) -> None:
    if not 0.0 < settings.strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {settings.strength}")
    if int(settings.num_inference_steps * settings.strength) < 1:
        needed = int(1 / settings.strength) + 1
        raise ValueError(
            f"{settings.num_inference_steps} steps at strength {settings.strength} leave no step to denoise; "
            f"use --num-inference-steps {needed} or more"
        )


def make_denoiser(pipe: AnimateDiffPipeline, settings: DenoiseSettings, source_prompt: str | None = None) -> Denoiser:
    """A denoiser sharing `pipe`'s weights; each call uses the same seed, so tiles and windows match.

    By default it re-noises with fresh noise (SDEdit). With `source_prompt` it instead inverts
    the clip with DDIM under that prompt to the strength's timestep and regenerates from
    there, which keeps more of the original motion and layout.
    """
    check_strength(settings)
    check_placeholders(settings.prompt, loaded_identity_names(pipe))
    video_pipe = AnimateDiffVideoToVideoPipeline.from_pipe(pipe)
    if source_prompt is None:
        video_pipe.scheduler = make_scheduler(settings.scheduler, pipe.scheduler.config)
    else:  # inversion and regeneration must walk the same timesteps
        config = make_scheduler("ddim", pipe.scheduler.config).config
        video_pipe.scheduler = DDIMScheduler.from_config(config, timestep_spacing="leading")

    def denoise(frames: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        height, width = frames.shape[-2:]
        if height % 8 or width % 8:
            raise ValueError(f"V2V frames must be multiples of 8 in size, got {width}x{height}")
        latents = None if source_prompt is None else invert_clip(video_pipe, frames, source_prompt, settings)
        output = video_pipe(
            video=None if latents is not None else [Image.fromarray(frame) for frame in to_uint8(frames)],
            latents=latents,
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


def ddim_invert(
    unet: Callable, latents: torch.Tensor, text: torch.Tensor, config: dict, steps: int, strength: float
) -> torch.Tensor:
    """DDIM inversion (Song et al. 2021, run backwards) of clean latents (B, C, F, h, w) to the
    timestep where a `strength` denoise of `steps` steps starts."""
    inverse = DDIMInverseScheduler.from_config(config, timestep_spacing="leading")
    inverse.set_timesteps(steps)
    for timestep in inverse.timesteps[: int(steps * strength)]:
        noise = unet(latents, timestep, encoder_hidden_states=text).sample
        latents = inverse.step(noise, timestep, latents).prev_sample
    return latents


@torch.no_grad()
def invert_clip(
    pipe: AnimateDiffVideoToVideoPipeline, frames: torch.Tensor, source_prompt: str, settings: DenoiseSettings
) -> torch.Tensor:
    """Encode frames (F, 3, H, W) with the VAE and invert them under the prompt that describes them."""
    device, dtype = pipe._execution_device, pipe.unet.dtype
    pixels = (frames * 2 - 1).to(device, dtype)
    latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor  # (F, C, h, w)
    latents = latents.permute(1, 0, 2, 3)[None]  # (1, C, F, h, w)
    text, _ = pipe.encode_prompt(source_prompt, device, 1, False)
    text = text.repeat_interleave(frames.shape[0], dim=0)  # one copy per frame, as the motion UNet expects
    config = pipe.scheduler.config
    return ddim_invert(pipe.unet, latents, text, config, settings.num_inference_steps, settings.strength)
