"""Video-to-video denoising, the engine of Face VCD, Tiled VCD and identity editing.

Each V2V stage is written against a `Denoiser` (`magicme.types`): a stack of B clips
(B, F, 3, H, W) in [0, 1] and the latent noise to re-noise them with, (B, C, F, H / s, W / s),
in; clips of the same shape out. B > 1 sends several tiles or face crops through the UNet
as one batch (`magicme.v2v.batches`). The caller owns the noise (k-diffusion's style): a stage draws one
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
from magicme.models.vae_chunks import vae_chunk
from magicme.settings import VideoToVideoSettings
from magicme.t2v.generate import loaded_identity_names
from magicme.t2v.noise_prior import NoiseField
from magicme.types import Denoiser, Latents


def noise_field_for(pipe: AnimateDiffPipeline, settings: VideoToVideoSettings) -> NoiseField:
    """The noise field a stage draws for `pipe`'s latent layout, from its gamma and seed."""
    return NoiseField(settings.gamma, settings.seed, pipe.unet.config.in_channels, pipe.vae_scale_factor)


def check_stage_settings(settings: VideoToVideoSettings) -> None:
    """Refuse a strength, step count or crop batch that cannot run, before any model loads."""
    if settings.crop_batch < 1:
        raise SettingError("crop_batch", f"must be 1 or more, got {settings.crop_batch}")
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
        `denoise(clips, noise)`: clips (B, F, 3, H, W) in [0, 1] (H, W multiples of 8) and noise
        (B, C, F, H / s, W / s) in, clips of the same shape out. By default it noises the clip
        with the noise it is given (SDEdit). With `source_prompt` it instead inverts the clip
        with DDIM under that prompt to the strength's timestep and regenerates from there,
        which keeps more of the original motion and layout (and uses no noise).
    """
    check_stage_settings(settings)
    check_placeholders(settings.prompt, loaded_identity_names(pipe))
    check_prompt_fits(pipe, lowercase_placeholders(settings.prompt))
    # A T2V clip's FreeU and FreeNoise live in the shared UNet's modules: the V2V stages take neither
    pipe.disable_freeu()
    if pipe.free_noise_enabled:
        pipe.disable_free_noise()
    video_pipe = AnimateDiffVideoToVideoPipeline.from_pipe(pipe)
    video_pipe.set_progress_bar_config(desc=settings.stage, leave=False)
    if source_prompt is None:
        video_pipe.scheduler = make_scheduler(settings.scheduler, pipe.scheduler.config)
    else:  # inversion and regeneration must walk the same timesteps
        config = make_scheduler("ddim", pipe.scheduler.config).config
        video_pipe.scheduler = DDIMScheduler.from_config(config, timestep_spacing="leading")

    def denoise(clips: torch.Tensor, noise: Latents) -> torch.Tensor:
        count, frames, _, height, width = clips.shape
        if height % 8 or width % 8:
            raise ValueError(f"V2V frames must be multiples of 8 in size, got {width}x{height}")
        if source_prompt is None:
            latents = noised_latents(video_pipe, clips, noise, settings)
        else:
            latents = invert_clip(video_pipe, clips, source_prompt, settings)
        output = video_pipe(
            latents=latents,
            prompt=[lowercase_placeholders(settings.prompt)] * count,  # the pipeline batches by prompts
            negative_prompt=[settings.negative_prompt] * count if settings.negative_prompt else None,
            height=height,
            width=width,
            strength=settings.strength,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            # one generator per clip, so ancestral samplers draw what they draw for the clip alone
            generator=[torch.Generator().manual_seed(settings.seed) for _ in range(count)],
            decode_chunk_size=vae_chunk(video_pipe, count * frames, height, width),
            output_type="pt",
        )
        return output.frames.float().clamp(0, 1).cpu()  # (B, F, 3, H, W)

    return denoise


@torch.no_grad()
def encode_clip(pipe: AnimateDiffVideoToVideoPipeline, clips: torch.Tensor) -> Latents:
    """Clips (B, F, 3, H, W) in [0, 1] -> the VAE's mean latents (B, C, F, h, w), scaled as the UNet
    expects; the frames go through the VAE in chunks sized to the free memory."""
    count, frames, _, height, width = clips.shape
    device, dtype = pipe._execution_device, pipe.unet.dtype
    pixels = clips.flatten(0, 1)
    chunk = vae_chunk(pipe, len(pixels), height, width)
    means = [
        pipe.vae.encode((part * 2 - 1).to(device, dtype)).latent_dist.mean for part in pixels.split(chunk)
    ]  # (B·F, C, h, w) in chunks
    latents = torch.cat(means) * pipe.vae.config.scaling_factor
    return latents.unflatten(0, (count, frames)).permute(0, 2, 1, 3, 4)


def noised_latents(
    pipe: AnimateDiffVideoToVideoPipeline, clips: torch.Tensor, noise: Latents, settings: VideoToVideoSettings
) -> Latents:
    """The clips' latents noised with `noise` to the first timestep a `strength` denoise runs, as the
    stock pipeline does with noise it draws itself."""
    latents = encode_clip(pipe, clips)
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
    pipe: AnimateDiffVideoToVideoPipeline, clips: torch.Tensor, source_prompt: str, settings: VideoToVideoSettings
) -> Latents:
    """Encode clips (B, F, 3, H, W) with the VAE and invert them under the prompt that describes them."""
    latents = encode_clip(pipe, clips)
    text, _ = pipe.encode_prompt(source_prompt, pipe._execution_device, len(clips), False)
    text = text.repeat_interleave(clips.shape[1], dim=0)  # one copy per frame, as the motion UNet expects
    config = pipe.scheduler.config
    return ddim_invert(pipe.unet, latents, text, config, settings.num_inference_steps, settings.strength)
