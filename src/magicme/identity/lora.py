"""The identity's UNet LoRA (beyond the paper), written in the one layout every tool reads.

kohya's names (`lora_unet_down_blocks_0_attentions_0_..._attn1_to_q.lora_down.weight`, with
an `.alpha` per module) are matched by AUTOMATIC1111's WebUI, ComfyUI and diffusers'
`load_lora_weights` alike; diffusers' own layout (`unet....to_q.lora_A.weight`) matches no
key in the first two. So training writes kohya's layout, and `export_lora` rewrites a LoRA
saved in diffusers' layout (by magicme 0.1) into it.
"""

from pathlib import Path

import torch
from diffusers.utils import convert_state_dict_to_kohya
from safetensors.torch import save_file
from torch import nn

from magicme.io.files import atomic_path, read_tensor_file

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the UNet's attention projections
KOHYA_PREFIX = "lora_unet_"
DIFFUSERS_PREFIX = "unet."


def add_unet_lora(unet: nn.Module, rank: int) -> list[nn.Parameter]:
    """Add a trainable LoRA (alpha = rank, so scale 1) to the UNet's attention; returns its parameters."""
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGETS))
    parameters = [parameter for parameter in unet.parameters() if parameter.requires_grad]
    for parameter in parameters:
        parameter.data = parameter.data.float()
    return parameters


def save_kohya_lora(peft_state: dict[str, torch.Tensor], path: Path) -> Path:
    """Write a UNet LoRA held in peft's naming (`get_peft_model_state_dict`) in kohya's layout, atomically."""
    kohya = convert_state_dict_to_kohya({DIFFUSERS_PREFIX + key: value for key, value in peft_state.items()})
    with atomic_path(path) as partial:
        save_file({key: value.detach().float().cpu().contiguous() for key, value in kohya.items()}, partial)
    return path


def export_lora(source: Path, output: Path) -> Path:
    """Rewrite a UNet LoRA file in kohya's layout (a copy when it is in kohya's layout already)."""
    state, _ = read_tensor_file(source)
    if all(key.startswith(KOHYA_PREFIX) for key in state):
        with atomic_path(output) as partial:
            Path(partial).write_bytes(Path(source).read_bytes())
        return output
    peft_names = {".lora.down.": ".lora_A.", ".lora.up.": ".lora_B."}  # diffusers' LoRA layout -> peft's
    unet = {}
    for key, value in state.items():
        for old, new in peft_names.items():
            key = key.replace(old, new)
        unet[key.removeprefix(DIFFUSERS_PREFIX)] = value
    return save_kohya_lora(unet, output)
