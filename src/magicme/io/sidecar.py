"""Every output's JSON sidecar: its settings sections and what happened, enough to reproduce it (`--config`)."""

import dataclasses
import json
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
    """Write the video, and `<name>.json` with each settings section and what happened; an mp4 or webm
    also carries that JSON in its metadata, so `--config clip.mp4` works when the sidecar is lost."""
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
    save_video(frames, output, fps=fps, comment=json.dumps(sections, default=str))
    write_json(sections, sidecar_path(output))
    return output
