"""Reading and writing videos as mp4 (H.264, web-ready), webm (VP9), gif, or a folder of PNG frames.

One frame layout crosses module boundaries: float tensors (F, C, H, W) in [0, 1].
mp4 goes through imageio-ffmpeg, whose wheel ships its own ffmpeg binary.
"""

import os
import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch
from PIL import Image

from magicme.io.files import atomic_path
from magicme.types import Frames


def to_uint8(frames: Frames) -> np.ndarray:
    """(F, C, H, W) floats in [0, 1] -> (F, H, W, C) uint8."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected RGB frames (F, 3, H, W), got {tuple(frames.shape)}")
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(frames: np.ndarray) -> Frames:
    """(F, H, W, C) uint8 -> (F, C, H, W) floats in [0, 1]."""
    return torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float() / 255  # a copy: frames may be read-only


def multiple_of_8(pixels: float) -> int:
    """The nearest positive multiple of 8: the VAE downsamples by 8, so every frame side must be one."""
    return max(8, round(pixels / 8) * 8)


def scaled_size(frames: Frames, factor: float) -> tuple[int, int]:
    """(height, width) of frames (F, 3, H, W) scaled by `factor`, each a multiple of 8."""
    height, width = frames.shape[-2:]
    return multiple_of_8(height * factor), multiple_of_8(width * factor)


def fit_to_multiple_of_8(frames: Frames, max_side: int) -> Frames:
    """Resize so the longer side is at most `max_side` and both sides are multiples of 8."""
    return resize_frames(frames, scaled_size(frames, min(1.0, max_side / max(frames.shape[-2:]))))


def resize_frames(frames: Frames, size: tuple[int, int]) -> Frames:
    """Frames (F, 3, H, W) resized to `size` (height, width), bicubic with antialiasing."""
    if tuple(size) == tuple(frames.shape[-2:]):
        return frames
    return torch.nn.functional.interpolate(frames, size=size, mode="bicubic", antialias=True).clamp(0, 1)


VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", "")  # "": a folder of PNG frames


def check_video_path(path: Path) -> None:
    """Refuse an output that could not be written, before any work is done: an unknown format, a folder
    on the way that is a file or not writable, a video name that is a folder, a frame folder in use."""
    path = Path(path)
    if path.suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"unknown video format {path.suffix!r} in {path}: use .mp4, .webm, .gif, or a folder for PNGs")
    existing = next(folder for folder in [path.parent, *path.parent.parents] if folder.exists())
    if not existing.is_dir():
        raise ValueError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise ValueError(f"cannot write {path}: {existing} is not writable")
    if path.is_dir() and (path.suffix or any(path.iterdir())):
        raise ValueError(f"{path} is a folder that is not empty; give a new name (a PNG folder must be new or empty)")


def save_video(frames: Frames, path: Path, fps: int = 8, comment: str | None = None) -> Path:
    """Write frames (F, 3, H, W) atomically; the suffix picks the format (.mp4, .webm, .gif, or none
    for PNGs). `comment` (magicme's settings, as JSON) goes into an mp4's or webm's metadata."""
    path = Path(path)
    pixels = to_uint8(frames)
    with atomic_path(path) as partial:
        if path.suffix in ENCODINGS:
            _write_encoded(pixels, partial, path.suffix, fps, comment)
            _check_written(Path(partial), len(pixels), path)
        elif path.suffix == ".gif":
            images = [Image.fromarray(frame) for frame in pixels]
            images[0].save(partial, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        elif path.suffix == "":
            Path(partial).mkdir()
            for index, frame in enumerate(pixels):
                Image.fromarray(frame).save(Path(partial) / f"frame_{index:04d}.png")
        else:
            raise ValueError(f"unknown video format {path.suffix!r}: use .mp4, .webm, .gif, or a folder name for PNGs")
    return path


ENCODINGS = {  # suffix -> codec and its settings
    ".mp4": ("libx264", ["-crf", "17", "-movflags", "+faststart"]),  # visually lossless; playable while loading
    ".webm": ("libvpx-vp9", ["-crf", "24", "-b:v", "0"]),
}


def _write_encoded(pixels: np.ndarray, path: str, suffix: str, fps: int, comment: str | None) -> None:
    """Encode with the ffmpeg that ships in imageio-ffmpeg; `comment` is stored in the file's metadata."""
    height, width = pixels.shape[1:3]
    codec, settings = ENCODINGS[suffix]
    writer = imageio_ffmpeg.write_frames(
        path,
        (width, height),
        fps=fps,
        codec=codec,
        quality=None,
        macro_block_size=2,  # yuv420p needs even sizes; never rescale sizes that already are
        ffmpeg_log_level="error",
        output_params=[*settings, *(["-metadata", f"comment={comment}"] if comment else [])],
    )
    writer.send(None)
    for frame in pixels:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def read_comment(path: Path) -> str | None:
    """The `comment` stored in an mp4's or webm's metadata (magicme stores its settings there), or None."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"]
    lines = subprocess.run(command, capture_output=True, text=True).stdout.splitlines()
    found = next((line for line in lines if line.lower().startswith("comment=")), None)
    return None if found is None else re.sub(r"\\(.)", r"\1", found.partition("=")[2])  # ffmetadata escapes


def _check_written(written: Path, frames: int, path: Path) -> None:
    """ffmpeg can fail on close (a full disk) without imageio-ffmpeg raising: count what was written
    before it replaces anything at `path`."""
    try:
        count, _ = imageio_ffmpeg.count_frames_and_secs(str(written))
    except (OSError, RuntimeError):
        count = 0
    if count != frames:
        raise OSError(
            f"writing {path} failed: the video holds {count} of {frames} frames (is the disk full?); "
            "nothing was replaced"
        )


def read_video(path: Path) -> torch.Tensor:
    """Read an mp4/gif/PNG folder back as (F, C, H, W) floats in [0, 1]."""
    path = Path(path)
    if path.is_dir():
        frame_files = sorted(path.glob("*.png"))
        if not frame_files:
            raise ValueError(f"{path} holds no PNG frames")
        return from_uint8(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in frame_files]))
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    if path.suffix == ".gif":
        with Image.open(path) as gif:
            frames = []
            for index in range(gif.n_frames):
                gif.seek(index)
                frames.append(np.asarray(gif.convert("RGB")))
        return from_uint8(np.stack(frames))
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        width, height = reader.__next__()["size"]
        frames = [np.frombuffer(chunk, dtype=np.uint8).reshape(height, width, 3) for chunk in reader]
    except (OSError, RuntimeError, ValueError):  # ffmpeg's own report is pages long; the fault is the file
        raise ValueError(f"{path} is not a readable video (truncated, or not a video?)") from None
    if not frames:
        raise ValueError(f"{path} holds no frames")
    return from_uint8(np.stack(frames))
