"""One generate job: load, render, write the video and a sidecar that reproduces it."""

import dataclasses
import platform
import time
from importlib.metadata import version
from pathlib import Path

from magicme.config import GenerationSettings, ModelSettings
from magicme.files import write_json
from magicme.generation import check_generation_settings, generate
from magicme.loading import load_pipeline
from magicme.video_io import save_video


def sidecar_path(video: Path) -> Path:
    """`clip.mp4` -> `clip.json`; a PNG folder `clip` -> `clip.json`."""
    return video.with_name(video.stem + ".json")


def render(model: ModelSettings, generation: GenerationSettings, output: Path) -> Path:
    """Render a clip to `output` (.mp4, .gif or a PNG folder) with its JSON sidecar beside it."""
    check_generation_settings(generation)  # fail before minutes of model loading
    started = time.perf_counter()
    pipe = load_pipeline(model)
    frames = generate(pipe, generation)
    save_video(frames, output, fps=generation.fps)
    record = {
        "model": dataclasses.asdict(model),
        "generation": dataclasses.asdict(generation),
        "record": {
            "video": str(output),
            "frames": frames.shape[0],
            "size": list(frames.shape[2:]),
            "seconds": round(time.perf_counter() - started, 2),
            "device": str(pipe.device),
            "dtype": str(pipe.unet.dtype),
            "python": platform.python_version(),
            "versions": {name: version(name) for name in ("magicme", "torch", "diffusers", "transformers")},
        },
    }
    write_json(record, sidecar_path(output))
    return output
