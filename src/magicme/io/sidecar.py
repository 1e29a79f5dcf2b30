"""Every output's JSON sidecar: its settings sections and what happened, enough to reproduce it (`--config`)."""

import dataclasses
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from magicme.io.files import write_json
from magicme.io.video import save_video
from magicme.types import Frames


def sidecar_path(video: Path) -> Path:
    """`clip.mp4` -> `clip.json`; a PNG folder `clip` -> `clip.json`."""
    return video.with_name(video.stem + ".json")


def save_with_sidecar(
    frames: Frames, output: Path, fps: int, settings: dict[str, Any], started: float, **record: Any
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
