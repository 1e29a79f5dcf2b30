"""The V2V stages as jobs on files: Face VCD, Tiled VCD and identity video editing.

Each reads a video (mp4, gif or a PNG folder), loads the T2V pipeline with the identities,
runs its stage through a shared-weight video-to-video denoiser, and writes the result with
a sidecar of its settings.
"""

import dataclasses
import time
from pathlib import Path

import torch

from magicme.config import EditSettings, FaceSettings, ModelSettings, UpscaleSettings
from magicme.faces import FACE_DETECTORS, refine_faces
from magicme.loading import load_pipeline
from magicme.render import save_with_sidecar
from magicme.tiling import axis_ramps, denoise_tiled, sharpen, upscale_frames, window_starts
from magicme.v2v import Denoiser, DenoiseSettings, make_denoiser
from magicme.video_io import read_video

StageSettings = FaceSettings | UpscaleSettings | EditSettings


def load_denoiser(model: ModelSettings, settings: StageSettings, source_prompt: str | None = None) -> Denoiser:
    """The pipeline with its identities, wrapped as a denoiser with the stage's prompt and strength."""
    if not settings.prompt.strip():
        raise ValueError("a prompt is needed, e.g. --prompt 'a photo of <alice> woman'")
    names = {field.name for field in dataclasses.fields(DenoiseSettings)}
    denoise_settings = DenoiseSettings(**{name: getattr(settings, name) for name in names})
    return make_denoiser(load_pipeline(model), denoise_settings, source_prompt)


def fit_to_multiple_of_8(frames: torch.Tensor, max_side: int) -> torch.Tensor:
    """Resize so the longer side is at most `max_side` and both sides are multiples of 8."""
    height, width = frames.shape[-2:]
    scale = min(1.0, max_side / max(height, width))
    size = (max(8, round(height * scale / 8) * 8), max(8, round(width * scale / 8) * 8))
    if size == (height, width):
        return frames
    return torch.nn.functional.interpolate(frames, size=size, mode="bicubic", antialias=True).clamp(0, 1)


def denoise_in_windows(frames: torch.Tensor, denoise: Denoiser, window: int, overlap: int) -> torch.Tensor:
    """Longer clips go through the motion module `window` frames at a time, overlaps blended."""
    starts = window_starts(frames.shape[0], window, overlap)
    size = min(window, frames.shape[0])
    result, total = torch.zeros_like(frames), torch.zeros(frames.shape[0])
    for start, ramp in zip(starts, axis_ramps(starts, size), strict=True):
        result[start : start + size] += denoise(frames[start : start + size]) * ramp[:, None, None, None]
        total[start : start + size] += ramp
    return result / total[:, None, None, None]


def refine_face_video(model: ModelSettings, settings: FaceSettings, source: Path, output: Path) -> Path:
    started, frames = time.perf_counter(), read_video(source)
    denoise = load_denoiser(model, settings)
    refined = refine_faces(
        frames,
        denoise,
        FACE_DETECTORS[settings.detector],
        settings.crop_factor,
        settings.guide_size,
        settings.feather,
        settings.largest_only,
    )
    sections = {"model": model, "refine_face": settings}
    return save_with_sidecar(refined, output, settings.fps, sections, started, source=str(source))


def upscale_video(model: ModelSettings, settings: UpscaleSettings, source: Path, output: Path) -> Path:
    started, frames = time.perf_counter(), read_video(source)
    denoise = load_denoiser(model, settings)
    upscaled = upscale_frames(frames, settings.factor, settings.upscaler_model)
    refined = sharpen(denoise_tiled(upscaled, denoise, settings.tile, settings.overlap), settings.sharpen)
    sections = {"model": model, "upscale": settings}
    return save_with_sidecar(refined, output, settings.fps, sections, started, source=str(source))


def edit_video(model: ModelSettings, settings: EditSettings, source: Path, output: Path) -> Path:
    started = time.perf_counter()
    frames = fit_to_multiple_of_8(read_video(source), settings.max_side)
    inversion = settings.method == "ddim-inversion"
    denoise = load_denoiser(model, settings, settings.source_prompt if inversion else None)
    edited = denoise_in_windows(frames, denoise, settings.window, settings.window_overlap)
    sections = {"model": model, "edit": settings}
    return save_with_sidecar(edited, output, settings.fps, sections, started, source=str(source))
