"""The V2V stages as jobs on files: Face VCD, Tiled VCD and identity video editing.

Each reads a video (mp4, gif or a PNG folder), loads the T2V pipeline with the identities,
runs its stage through a shared-weight video-to-video denoiser with the clip's one noise
field, and writes the result with a sidecar of its settings.
"""

import time
from pathlib import Path

from diffusers import AnimateDiffPipeline

from magicme.errors import SettingError
from magicme.io.locks import exclusive
from magicme.io.sidecar import save_with_sidecar
from magicme.io.video import check_video_path, fit_to_multiple_of_8, read_video
from magicme.models.loading import shared_pipeline
from magicme.registry import face_detector
from magicme.settings import EditSettings, FaceSettings, ModelSettings, UpscaleSettings, VideoToVideoSettings
from magicme.t2v.layout import read_layout
from magicme.t2v.noise_prior import NoiseField
from magicme.types import Denoiser
from magicme.v2v.denoiser import check_stage_settings, make_denoiser, noise_field_for
from magicme.v2v.faces import refine_faces
from magicme.v2v.identities import face_owners, identity_free, tile_denoisers
from magicme.v2v.tiles import tiled_vcd, upscale_and_sharpen
from magicme.v2v.windows import denoise_in_windows


def load_denoiser(
    model: ModelSettings, settings: VideoToVideoSettings, source_prompt: str | None = None
) -> tuple[Denoiser, NoiseField]:
    """The pipeline with its identities, wrapped as a denoiser with the stage's prompt and strength,
    and the noise field the stage draws from."""
    if not settings.prompt.strip():
        raise SettingError("prompt", "a prompt is needed, e.g. 'a photo of <alice> woman'")
    check_stage_settings(settings)
    pipe: AnimateDiffPipeline = shared_pipeline(model)
    return make_denoiser(pipe, settings, source_prompt), noise_field_for(pipe, settings)


def stage_noise(model: ModelSettings, settings: VideoToVideoSettings) -> NoiseField:
    """The noise field of a stage whose faces or tiles each get their identities' denoiser, so it
    needs no denoiser of its own; checks that the prompt says where the identities go."""
    check_stage_settings(identity_free(settings))
    return noise_field_for(shared_pipeline(model), settings)


def refine_face_video(model: ModelSettings, settings: FaceSettings, source: Path, output: Path) -> Path:
    """Face VCD on the video at `source`, written to `output` with its sidecar."""
    check_video_path(output)
    with exclusive(output):
        started, frames = time.perf_counter(), read_video(source)
        layout = read_layout(settings.layout, settings.regions)
        several = layout is not None or bool(settings.references)
        denoise, noise = (None, stage_noise(model, settings)) if several else load_denoiser(model, settings)
        detector = face_detector(settings.detector)
        refined = refine_faces(
            frames,
            denoise,
            noise.draw,
            detector,
            settings.crop_factor,
            settings.guide_size,
            settings.feather,
            settings.largest_only,
            settings.min_enlargement,
            settings.crop_batch,
            face_owners(model, settings, layout, frames) if several else None,
        )
        sections = {"model": model, "refine_face": settings}
        return save_with_sidecar(refined, output, settings.fps, sections, started, source=str(source))


def upscale_video(model: ModelSettings, settings: UpscaleSettings, source: Path, output: Path) -> Path:
    """Tiled VCD on the video at `source` (strength 0: upscale and sharpen only), written to `output`."""
    check_video_path(output)
    with exclusive(output):
        started, frames = time.perf_counter(), read_video(source)
        if settings.strength == 0:  # upscale and sharpen only: no model loads
            refined = upscale_and_sharpen(frames, settings)
        else:
            layout = read_layout(settings.layout, settings.regions)
            denoise, noise = load_denoiser(model, settings) if layout is None else (None, stage_noise(model, settings))
            per_tile = None if layout is None else tile_denoisers(model, settings, layout, frames.shape)
            refined = tiled_vcd(frames, denoise, noise.draw, settings, per_tile)
        sections = {"model": model, "upscale": settings}
        return save_with_sidecar(refined, output, settings.fps, sections, started, source=str(source))


def edit_video(model: ModelSettings, settings: EditSettings, source: Path, output: Path) -> Path:
    """Identity editing of the video at `source` (SDEdit or DDIM inversion), written to `output`."""
    check_video_path(output)
    with exclusive(output):
        started = time.perf_counter()
        frames = fit_to_multiple_of_8(read_video(source), settings.max_side)
        inversion = settings.method == "ddim-inversion"
        denoise, noise = load_denoiser(model, settings, settings.source_prompt if inversion else None)
        field = noise.draw(*frames.shape[:1], *frames.shape[-2:])
        edited = denoise_in_windows(
            frames, denoise, field, settings.window, settings.window_overlap, settings.crop_batch
        )
        sections = {"model": model, "edit": settings}
        return save_with_sidecar(edited, output, settings.fps, sections, started, source=str(source))
