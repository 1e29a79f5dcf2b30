"""T2V VCD: AnimateDiff text-to-video started from the 3D Gaussian noise prior.

The pipeline is diffusers' `AnimateDiffPipeline` as it is; VCD only chooses its initial
latents (the prior) and its options. The stock pipeline scales given latents by the
scheduler's `init_noise_sigma` itself, so the prior is passed unscaled.
"""

import time
from contextlib import nullcontext
from pathlib import Path

import torch
from diffusers import AnimateDiffPipeline

from magicme.errors import SettingError
from magicme.identity.files import PLACEHOLDER, check_placeholders, check_prompt_fits, lowercase_placeholders
from magicme.io.locks import exclusive
from magicme.io.sidecar import save_with_sidecar
from magicme.io.video import check_video_path
from magicme.models.loading import shared_pipeline
from magicme.models.schedulers import make_scheduler
from magicme.models.vae_chunks import vae_chunk
from magicme.settings import FREEU_SPEC, GenerationSettings, ModelSettings
from magicme.t2v.layout import SHARED, Layout, check_layout, choose_layout, identities_named
from magicme.t2v.noise_prior import sample_noise_prior, validate_gamma
from magicme.t2v.prompts import parse_prompt_schedule
from magicme.t2v.regional_attention import Binding, bound_regions, region_prompt
from magicme.types import Frames, Latents


def check_generation_settings(settings: GenerationSettings) -> None:
    """Reject settings that would fail deep inside the pipeline, with the fix in the message."""
    if not settings.prompt.strip():
        raise SettingError("prompt", "a prompt is needed, e.g. 'a photo of <alice> woman on the beach'")
    if settings.height % 8 or settings.width % 8 or min(settings.height, settings.width) < 8:
        raise ValueError(
            "height and width must be positive multiples of 8 (the VAE downsamples by 8), got "
            f"{settings.height}x{settings.width}; try {settings.height // 8 * 8 or 8}x{settings.width // 8 * 8 or 8}"
        )
    if settings.num_frames < 1 or settings.num_inference_steps < 1:
        raise ValueError("num_frames and num_inference_steps must be at least 1")
    validate_gamma(settings.gamma)
    if not 0 <= settings.binding_start < 1:
        raise SettingError(
            "binding_start",
            f"must be in [0, 1), got {settings.binding_start}; for no binding at all use `layout: {SHARED}`",
        )


def check_frame_limit(pipe: AnimateDiffPipeline, settings: GenerationSettings) -> None:
    """The motion module attends over at most its number of frame positions at once; longer clips need windows."""
    limit = pipe.unet.config.motion_max_seq_length
    window = settings.free_noise_context if settings.free_noise else settings.num_frames
    if window > limit:
        fix = (
            f"use --free-noise-context {limit} or less"
            if settings.free_noise
            else f"render at most {limit} frames, or use --free-noise (it denoises in overlapping windows)"
        )
        raise SettingError(
            "free_noise_context" if settings.free_noise else "num_frames",
            f"{window} frames at once, but this motion module knows {limit} frame positions: {fix}",
        )


def loaded_identity_names(pipe: AnimateDiffPipeline) -> list[str]:
    """Names of the identities installed in this pipeline's tokenizer."""
    return [match.group(1) for token in pipe.tokenizer.get_added_vocab() if (match := PLACEHOLDER.fullmatch(token))]


def configure_pipeline(pipe: AnimateDiffPipeline, settings: GenerationSettings, travel: bool) -> None:
    """Set the sampler and the optional FreeU / FreeInit / FreeNoise features for this run."""
    pipe.scheduler = make_scheduler(settings.scheduler, pipe.scheduler.config)
    if settings.freeu:
        pipe.enable_freeu(**FREEU_SPEC)
    else:
        pipe.disable_freeu()
    if settings.free_init:
        pipe.enable_free_init(num_iters=settings.free_init_iters)
    else:
        pipe.disable_free_init()
    if settings.free_noise:
        pipe.enable_free_noise(context_length=settings.free_noise_context, context_stride=settings.free_noise_stride)
    elif travel:
        # diffusers interpolates keyframe prompts on its FreeNoise path; one window spanning
        # the clip makes that path compute exactly what the plain motion module does.
        pipe.enable_free_noise(context_length=settings.num_frames, context_stride=settings.num_frames)
    elif pipe.free_noise_enabled:
        pipe.disable_free_noise()


def initial_latents(pipe: AnimateDiffPipeline, settings: GenerationSettings, generator: torch.Generator) -> Latents:
    """Draw the clip's starting noise from the 3D prior: (1, C, F, H / s, W / s), as the pipeline expects."""
    shape = (
        1,
        pipe.unet.config.in_channels,
        settings.num_frames,
        settings.height // pipe.vae_scale_factor,
        settings.width // pipe.vae_scale_factor,
    )  # (B, C, F, h, w)
    return sample_noise_prior(
        shape, settings.gamma, generator=generator, device=pipe._execution_device, dtype=pipe.text_encoder.dtype
    )


def bind_regions(pipe: AnimateDiffPipeline, settings: GenerationSettings, layout: Layout) -> Binding:
    """Each region's own prompt, encoded alone, and the clip's prompt with no identity in it (what
    pixels outside every region read)."""
    latent = (settings.height // pipe.vae_scale_factor, settings.width // pipe.vae_scale_factor)
    masks = layout.masks(settings.num_frames, *latent)
    check_layout(layout, identities_named(settings.prompt), masks)
    prompt, loaded = lowercase_placeholders(settings.prompt), loaded_identity_names(pipe)

    def encode(text: str) -> torch.Tensor:
        check_prompt_fits(pipe, text)
        return pipe.encode_prompt(text, pipe._execution_device, 1, do_classifier_free_guidance=False)[0]

    texts = []
    for region in layout.regions:
        check_placeholders(region.prompt, loaded)
        texts.append(encode(region_prompt(prompt, region.name, lowercase_placeholders(region.prompt))))
    nobody = encode(region_prompt(prompt, ""))  # every identity deleted
    guided = settings.guidance_scale > 1
    return Binding(texts, list(masks.values()), nobody, guided, start=settings.binding_start)


def generate(pipe: AnimateDiffPipeline, settings: GenerationSettings) -> Frames:
    """Render one clip with T2V VCD.

    Args:
        pipe: an `AnimateDiffPipeline` from `load_pipeline`, with the identities the prompt names.
        settings: prompt (or prompt schedule), size, steps, sampler, gamma of the 3D prior, seed.

    Returns:
        frames of shape (F, 3, H, W), floats in [0, 1], with F = `settings.num_frames`.
    """
    return generate_in_layout(pipe, settings, choose_layout(settings))


def generate_in_layout(pipe: AnimateDiffPipeline, settings: GenerationSettings, layout: Layout | None) -> Frames:
    """`generate` with the clip's regions already read (`choose_layout`), so that a caller that records
    them reads the layout file once."""
    # 1. Check inputs
    check_generation_settings(settings)
    check_placeholders(settings.prompt, loaded_identity_names(pipe))
    check_frame_limit(pipe, settings)
    prompt = lowercase_placeholders(settings.prompt)
    schedule = parse_prompt_schedule(prompt, settings.num_frames)
    for text in [*(schedule or {0: prompt}).values(), settings.negative_prompt]:
        check_prompt_fits(pipe, text)

    # 2. Bind each identity to its region, when several share the clip or a layout is given
    binding = None
    if layout:
        if schedule is not None:
            raise SettingError(
                "regions", f"regions do not work with prompt travel yet; use one prompt, or `layout: {SHARED}`"
            )
        binding = bind_regions(pipe, settings, layout)

    # 3. Configure the sampler and optional features
    configure_pipeline(pipe, settings, travel=schedule is not None)

    # 4. Draw the initial latents from the 3D noise prior (a CPU generator: same seed, same video on any device)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    latents = initial_latents(pipe, settings, generator)

    # 5. Denoise with the stock AnimateDiff pipeline
    with bound_regions(pipe.unet, binding) if binding else nullcontext():
        output = pipe(
            prompt=schedule or prompt,
            negative_prompt=settings.negative_prompt or None,
            num_frames=settings.num_frames,
            height=settings.height,
            width=settings.width,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            generator=generator,
            latents=latents,
            decode_chunk_size=vae_chunk(pipe, settings.num_frames, settings.height, settings.width),
            output_type="pt",
            callback_on_step_end=binding.step_done if binding else None,
        )
    frames = output.frames[0]  # (F, C, H, W)
    assert frames.shape == (settings.num_frames, 3, settings.height, settings.width), frames.shape
    return frames.float().clamp(0, 1).cpu()


def render(model: ModelSettings, generation: GenerationSettings, output: Path) -> Path:
    """Load the model, render a clip and write it with its JSON sidecar beside it.

    Args:
        model: the weights (base model, motion adapter, identities) and their device.
        generation: what to render (see `generate`).
        output: `.mp4`, `.gif`, or a folder for PNG frames.

    Returns:
        `output`.
    """
    check_generation_settings(generation)  # fail before minutes of model loading
    layout = choose_layout(generation)  # a bad layout file too; and it is read once
    check_video_path(output)
    with exclusive(output):  # a second process aimed at the same file is refused, not raced
        started = time.perf_counter()
        pipe = shared_pipeline(model)
        frames = generate_in_layout(pipe, generation, layout)
        settings = {"model": model, "generation": generation}
        record = {"device": str(pipe.device), "dtype": str(pipe.unet.dtype)}
        if layout:
            record["layout"] = layout.record()  # the regions as used, an automatic layout's included
        return save_with_sidecar(frames, output, generation.fps, settings, started, **record)
