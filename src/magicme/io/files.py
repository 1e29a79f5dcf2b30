"""Files on disk: outputs written atomically (a crash or a full disk never leaves a half-written file),
and PyTorch files read without ever running the code a pickle can carry."""

import glob
import json
import os
import pickle
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open


@contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """Yield a temporary path beside `path` (same suffix) and move it into place on success.

    The temporary keeps the suffix because writers such as ffmpeg pick the format from it.
    On any error the temporary is removed and the previous file at `path`, if any, is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")  # one per writer: none interleave
    try:
        yield str(partial)
        os.replace(partial, path)
    except BaseException:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        raise


def remove_stale_partials(path: Path) -> None:
    """Delete the temporaries a killed writer (`kill -9`, power loss) left for `path`; a live writer's stay."""
    for stale in path.parent.glob(f".{glob.escape(path.stem)}.*.partial{glob.escape(path.suffix)}"):
        pid = stale.name[len(path.stem) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def load_plain_torch_file(path: Path) -> Any:
    """A `.pt`/`.bin`/`.ckpt` file read with `weights_only=True`: tensors, numbers, strings and
    containers of them. A file that holds code is refused, because loading it could run that code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path} contains code, not only tensors; it was not loaded, because loading it could run that "
            "code. Use a .safetensors file, or a .pt file of plain tensors."
        ) from None
    except Exception as error:  # torch reports a truncated or foreign file in many ways; all mean the same here
        raise ValueError(
            f"{path} is not a readable PyTorch or safetensors file (truncated, or another format?)"
        ) from error


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with its JSON header's length (8 bytes, little-endian), then '{'."""
    with open(path, "rb") as handle:
        start = handle.read(9)
    return len(start) == 9 and start[8:] == b"{" and int.from_bytes(start[:8], "little") < path.stat().st_size


def read_tensor_file(path: Path) -> tuple[Any, dict[str, str]]:
    """A safetensors or plain PyTorch file, told apart by content: its content and its safetensors
    metadata (none for a pickle). Raises ValueError with a message for users on any unreadable file."""
    path = Path(path)
    if not is_safetensors(path):
        return load_plain_torch_file(path), {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file (truncated?): {error}") from None


def write_json(data: dict[str, Any], path: Path) -> Path:
    """Write JSON atomically, readable by people (indented) and by `--config`."""
    with atomic_path(path) as partial:
        Path(partial).write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path
