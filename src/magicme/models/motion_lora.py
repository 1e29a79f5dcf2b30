"""AnimateDiff motion LoRAs (camera moves) from hub ids, diffusers folders or original files.

The original files (`v2_lora_ZoomIn.ckpt` and its siblings, which the reference pipeline
uses at 0.6) name their weights after AnimateDiff's own motion module:
`down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0
.processor.to_q_lora.down.weight`. diffusers finds no LoRA under those names, so they are
renamed to its motion-module names first (the renames of diffusers'
`scripts/convert_animatediff_motion_lora_to_diffusers.py`).
"""

from pathlib import Path
from typing import Any

import torch

from magicme.io.files import read_tensor_file

ADAPTER = "motion"
ORIGINAL_MARK = ".temporal_transformer."
ORIGINAL_TO_DIFFUSERS = {
    ".temporal_transformer": "",
    ".attention_blocks.0": ".attn1",
    ".attention_blocks.1": ".attn2",
    ".norms.0": ".norm1",
    ".norms.1": ".norm2",
    ".ff_norm": ".norm3",
}


class MotionLoraError(ValueError):
    """A motion LoRA that cannot be used; the message says why."""


def from_original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original AnimateDiff motion LoRA to the keys diffusers' LoRA loader reads."""
    converted = {}
    for key, value in state.items():
        if "pos_encoder" in key:
            continue
        for old, new in ORIGINAL_TO_DIFFUSERS.items():
            key = key.replace(old, new)
        converted[f"unet.{key}"] = value
    return converted


def motion_lora_weights(source: str) -> str | dict[str, torch.Tensor]:
    """What to hand diffusers' `load_lora_weights`: the source itself, or an original file's renamed weights."""
    if not Path(source).expanduser().is_file():
        return source  # a hub id or a diffusers folder
    try:
        state, _ = read_tensor_file(Path(source).expanduser())
    except ValueError as error:
        raise MotionLoraError(f"motion LoRA {error}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise MotionLoraError(f"motion LoRA {source} holds no tensors by name; is it a LoRA file?")
    return from_original_layout(state) if any(ORIGINAL_MARK in key for key in state) else str(source)


def load_motion_lora(pipe: Any, source: str) -> None:
    """Load a motion LoRA as the adapter `motion`, refusing a file that adds no motion-module weights."""
    pipe.load_lora_weights(motion_lora_weights(source), adapter_name=ADAPTER)
    if ADAPTER not in pipe.get_list_adapters().get("unet", []):
        raise MotionLoraError(
            f"motion LoRA {source} matched no layer of the motion modules: give an AnimateDiff motion LoRA "
            "(original .ckpt/.safetensors, or a diffusers LoRA folder such as guoyww/animatediff-motion-lora-zoom-in)"
        )
