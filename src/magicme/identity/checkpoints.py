"""Resumable training checkpoints: tensors, optimizer state and the RNG, written atomically.

A checkpoint is a folder `checkpoints/step-000200/` with `state.safetensors` (trained
tensors and the generator's state), `optimizer.pt` (plain tensors and numbers, read back
with `weights_only=True`) and `step.json`. Only the newest `KEEP` checkpoints are kept.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from magicme.io.files import atomic_path, load_plain_torch_file

KEEP = 2
GENERATOR_KEY = "__generator_state__"


@dataclass
class Checkpoint:
    step: int
    tensors: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generator_state: torch.Tensor


def checkpoint_folders(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step-*[0-9]"))


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write a checkpoint folder whole or not at all, then drop the oldest beyond `KEEP`."""
    folder = run_dir / "checkpoints" / f"step-{checkpoint.step:06d}"
    with atomic_path(folder) as partial:
        Path(partial).mkdir()
        tensors = {name: t.detach().cpu().contiguous() for name, t in checkpoint.tensors.items()}
        save_file({**tensors, GENERATOR_KEY: checkpoint.generator_state}, Path(partial) / "state.safetensors")
        torch.save(checkpoint.optimizer, Path(partial) / "optimizer.pt")
        (Path(partial) / "step.json").write_text(json.dumps({"step": checkpoint.step}))
        if folder.exists():
            shutil.rmtree(folder)
    for stale in checkpoint_folders(run_dir)[:-KEEP]:
        shutil.rmtree(stale)
    return folder


def load_latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    folders = checkpoint_folders(run_dir)
    if not folders:
        return None
    folder = folders[-1]
    tensors = load_file(folder / "state.safetensors")
    return Checkpoint(
        step=json.loads((folder / "step.json").read_text())["step"],
        tensors=tensors,
        optimizer=load_plain_torch_file(folder / "optimizer.pt"),
        generator_state=tensors.pop(GENERATOR_KEY),
    )
