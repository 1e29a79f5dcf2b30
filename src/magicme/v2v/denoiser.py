"""Video-to-video denoising, the engine of Face VCD, Tiled VCD and identity editing.

Each V2V stage is written against a `Denoiser` (`magicme.types`): frames (F, 3, H, W) in
[0, 1] and the latent noise to re-noise them with, (1, C, F, H / s, W / s), in; frames of
the same shape out. The caller owns the noise (k-diffusion's style): a stage draws one
`NoiseField` per clip from the 3D prior and crops it for each tile, face and window, so the
prior and the seed mean the same thing in every stage and overlapping tiles share their
noise. The real denoiser encodes the clip, noises it to `strength` with the given noise and
denoises it as a video with AnimateDiff, sharing the T2V pipeline's weights
(`AnimateDiffVideoToVideoPipeline.from_pipe`); tests pass simpler ones.
"""

from collections.abc import Callable

import torch
from diffusers import AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline, DDIMInverseScheduler, DDIMScheduler

from magicme.errors import SettingError
from magicme.identity.files import check_placeholders, check_prompt_fits, lowercase_placeholders
from magicme.models.schedulers import make_scheduler
from magicme.settings import VideoToVideoSettings
from magicme.t2v.generate import loaded_identity_names
from magicme.t2v.noise_prior import NoiseField
from magicme.types import Denoiser, Frames, Latents


def noise_field_for(pipe: AnimateDiffPipeline, settings: VideoToVideoSettings) -> NoiseField:
    """The noise field a stage draws for `pipe`'s latent layout, from its gamma and seed."""
    return NoiseField(settings.gamma, settings.seed, pipe.unet.config.in_channels, pipe.vae_scale_factor)


def check_strength(settings: VideoToVideoSettings) -> None:
    if not 0.0 < settings.strength <= 1.0:
        raise SettingError("strength", f"must be in (0, 1], got {settings.strength}")
    if int(settings.num_inference_steps * settings.strength) < 1:
        needed = int(1 / settings.strength) + 1
        raise SettingError(
            "num_inference_steps",
            f"{settings.num_inference_steps} steps at strength {settings.strength} leave no step to denoise; "
            f"use {needed} or more",
        )


def make_denoiser(
    pipe: AnimateDiffPipeline, settings: VideoToVideoSettings, source_prompt: str | None = None
) -> Denoiser:
    """A denoiser sharing `pipe`'s weights, with the stage's prompt, strength and sampler.

    Args:
        pipe: the T2V pipeline, identities installed; its weights are shared, not copied.
        settings: the stage's prompt, strength, steps, guidance and sampler.
        source_prompt: with it, DDIM inversion instead of SDEdit (below).

    Returns:
        `denoise(frames, noise)`: frames (F, 3, H, W) in [0, 1] (H, W multiples of 8) and noise
        (1, C, F, H / s, W / s) in, frames of the same shape out. By default it noises the clip
        with the noise it is given (SDEdit). With `source_prompt` it instead inverts the clip
        with DDIM under that prompt to the strength's timestep and regenerates from there,
        which keeps more of the original motion and layout (and uses no noise).
    """
    check_strength(settings)
    check_placeholders(settings.prompt, loaded_identity_names(pipe))
    check_prompt_fits(pipe, lowercase_placeholders(settings.prompt))
    video_pipe = AnimateDiffVideoToVideoPipeline.from_pipe(pipe)
    video_pipe.set_progress_bar_config(desc=settings.stage, leave=False)
    if source_prompt is None:
        video_pipe.scheduler = make_scheduler(settings.scheduler, pipe.scheduler.config)
    else:  # inversion and regeneration must walk the same timesteps
        config = make_scheduler("ddim", pipe.scheduler.config).config
        video_pipe.scheduler = DDIMScheduler.from_config(config, timestep_spacing="leading")

    def denoise(frames: Frames, noise: Latents) -> Frames:
        height, width = frames.shape[-2:]
        if height % 8 or width % 8:
            raise ValueError(f"V2V frames must be multiples of 8 in size, got {width}x{height}")
        if source_prompt is None:
            latents = noised_latents(video_pipe, frames, noise, settings)
        else:
            latents = invert_clip(video_pipe, frames, source_prompt, settings)
        output = video_pipe(
            latents=latents,
            prompt=lowercase_placeholders(settings.prompt),
            negative_prompt=settings.negative_prompt or None,
            height=height,
            width=width,
            strength=settings.strength,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            generator=torch.Generator().manual_seed(settings.seed),  # only ancestral samplers draw more
            output_type="pt",
        )
        return output.frames[0].float().clamp(0, 1).cpu()  # (F, 3, H, W)

    return denoise


@torch.no_grad()
def encode_clip(pipe: AnimateDiffVideoToVideoPipeline, frames: Frames) -> Latents:
    """Frames (F, 3, H, W) in [0, 1] -> the VAE's mean latents (1, C, F, h, w), scaled as the UNet expects."""
    device, dtype = pipe._execution_device, pipe.unet.dtype
    pixels = (frames * 2 - 1).to(device, dtype)
    latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor  # (F, C, h, w)
    return latents.permute(1, 0, 2, 3)[None]


def noised_latents(
    pipe: AnimateDiffVideoToVideoPipeline, frames: Frames, noise: Latents, settings: VideoToVideoSettings
) -> Latents:
    """The clip's latents noised with `noise` to the first timestep a `strength` denoise runs, as the
    stock pipeline does with noise it draws itself."""
    latents = encode_clip(pipe, frames)
    if noise.shape != latents.shape:
        raise ValueError(f"noise of shape {tuple(noise.shape)} does not fit latents of shape {tuple(latents.shape)}")
    device = latents.device
    pipe.scheduler.set_timesteps(settings.num_inference_steps, device=device)
    timesteps, _ = pipe.get_timesteps(settings.num_inference_steps, pipe.scheduler.timesteps, settings.strength, device)
    return pipe.scheduler.add_noise(latents, noise.to(device, latents.dtype), timesteps[:1])


def ddim_invert(
    unet: Callable, latents: Latents, text: torch.Tensor, config: dict, steps: int, strength: float
) -> Latents:
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
    pipe: AnimateDiffVideoToVideoPipeline, frames: Frames, source_prompt: str, settings: VideoToVideoSettings
) -> Latents:
    """Encode frames (F, 3, H, W) with the VAE and invert them under the prompt that describes them."""
    latents = encode_clip(pipe, frames)
    text, _ = pipe.encode_prompt(source_prompt, pipe._execution_device, 1, False)
    text = text.repeat_interleave(frames.shape[0], dim=0)  # one copy per frame, as the motion UNet expects
    config = pipe.scheduler.config
    return ddim_invert(pipe.unet, latents, text, config, settings.num_inference_steps, settings.strength)
