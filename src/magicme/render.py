"""Jobs on files: render a clip, and write any stage's output with a sidecar that reproduces it."""

import dataclasses
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from magicme.config import GenerationSettings, ModelSettings
from magicme.files import write_json
from magicme.generation import check_generation_settings, generate
from magicme.loading import load_pipeline
from magicme.video_io import save_video


def sidecar_path(video: Path) -> Path:
    """`clip.mp4` -> `clip.json`; a PNG folder `clip` -> `clip.json`."""
    return video.with_name(video.stem + ".json")


def save_with_sidecar(
    frames: torch.Tensor, output: Path, fps: int, settings: dict[str, Any], started: float, **record: Any
) -> Path:
    """Write the video, then `<name>.json` with each settings section and what happened."""
    save_video(frames, output, fps=fps)
    sections = {name: dataclasses.asdict(value) for name, value in settings.items()}
    sections["record"] = {
        "video": str(output),
        "frames": frames.shape[0],
        "size": list(frames.shape[2:]),
        "seconds": round(time.perf_counter() - started, 2),
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("magicme", "torch", "diffusers", "transformers")},
        **record,
    }
    write_json(sections, sidecar_path(output))
    return output


def render(model: ModelSettings, generation: GenerationSettings, output: Path) -> Path:
    """Render a clip to `output` (.mp4, .gif or a PNG folder) with its JSON sidecar beside it."""
    check_generation_settings(generation)  # fail before minutes of model loading
    started = time.perf_counter()
    pipe = load_pipeline(model)
    frames = generate(pipe, generation)
    settings = {"model": model, "generation": generation}
    device = {"device": str(pipe.device), "dtype": str(pipe.unet.dtype)}
    return save_with_sidecar(frames, output, generation.fps, settings, started, **device)
