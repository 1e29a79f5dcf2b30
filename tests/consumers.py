"""How AUTOMATIC1111's WebUI and ComfyUI read embeddings and LoRAs, reproduced from their source.

Neither tool can be installed here, so each rule below is copied in a few lines from the file
named beside it (A1111 at v1.6-v1.9, ComfyUI at its 2024 releases), keeping only the branches
that SD-1.5 embeddings and UNet LoRAs reach. The tests feed magicme's exports through these
rules: a file these rules reject, or a LoRA key they leave unmatched, is one the tool rejects.
"""

import pickle
import re
import zipfile
from pathlib import Path

import safetensors.torch
import torch

# ---- A1111: modules/safe.py (the unpickler every torch.load in the WebUI goes through) ----
A1111_ZIP_NAMES = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
A1111_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    *(("torch", name) for name in ("FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage")),
    ("torch", "ByteStorage"),
    ("torch", "float32"),
    ("torch", "BFloat16Storage"),
    ("torch.nn.modules.container", "ParameterDict"),
}


class A1111Unpickler(pickle.Unpickler):
    """modules/safe.py RestrictedUnpickler: storages are stubs; any global outside the list is refused."""

    def persistent_load(self, saved_id):
        assert saved_id[0] == "storage"
        return torch.storage.TypedStorage(_internal=True)

    def find_class(self, module, name):
        if (module, name) in A1111_GLOBALS:
            return getattr(__import__(module, fromlist=[name]), name)
        raise pickle.UnpicklingError(f"global '{module}/{name}' is forbidden")


def a1111_check_pt(path: Path) -> None:
    """modules/safe.py check_pt: the zip's entry names are checked, then its pickle; a legacy file is five pickles."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not A1111_ZIP_NAMES.match(name):
                    raise pickle.UnpicklingError(f"bad file inside {path}: {name}")
            (data_pkl,) = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            with archive.open(data_pkl) as handle:
                A1111Unpickler(handle).load()
    except zipfile.BadZipFile:
        with open(path, "rb") as handle:
            unpickler = A1111Unpickler(handle)
            for _ in range(5):
                unpickler.load()


def a1111_embedding(path: Path) -> tuple[str, torch.Tensor]:
    """modules/textual_inversion/textual_inversion.py load_from_file: the prompt word is the file's stem."""
    if path.suffix == ".safetensors":
        data = safetensors.torch.load_file(str(path), device="cpu")
    else:
        a1111_check_pt(path)
        data = torch.load(path, map_location="cpu", weights_only=True)  # A1111 then unpickles for real
    if "string_to_param" in data:
        param_dict = data["string_to_param"]
        assert len(param_dict) == 1, "embedding file has multiple terms in it"
        embedding = next(iter(param_dict.items()))[1]
    elif isinstance(data, dict) and isinstance(next(iter(data.values())), torch.Tensor):  # diffusers concepts
        assert len(data.keys()) == 1, "embedding file has multiple terms in it"
        embedding = next(iter(data.values()))
        if len(embedding.shape) == 1:
            embedding = embedding.unsqueeze(0)
    else:
        raise ValueError(f"Couldn't identify {path.stem} as neither textual inversion embedding nor diffuser concept.")
    return path.stem, embedding.detach().float()


# ---- ComfyUI: comfy/sd1_clip.py load_embed (used as `embedding:NAME` in a prompt) ----
def comfyui_embedding(path: Path, embed_key: str = "clip_l") -> torch.Tensor:
    if path.suffix.lower() == ".safetensors":
        embed = safetensors.torch.load_file(str(path), device="cpu")
    else:
        embed = torch.load(path, weights_only=True, map_location="cpu")
    if "string_to_param" in embed:
        return next(iter(embed["string_to_param"].values()))
    if embed_key in embed:
        return embed[embed_key]
    return next(iter(embed.values()))


# ---- A1111: extensions-builtin/Lora/networks.py (UNet branches of convert_diffusers_name_to_compvis) ----
A1111_RESNET_SUFFIXES = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1"}
A1111_RESNET_SUFFIXES |= {"conv_shortcut": "skip_connection"}


def a1111_compvis_name(key: str) -> str:
    """A kohya module name (`lora_unet_..._to_q`) as the name A1111 gives the LDM module it patches."""
    if match := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        block, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        rest = A1111_RESNET_SUFFIXES.get(rest, rest) if kind == "resnets" else rest
        return f"diffusion_model_input_blocks_{1 + block * 3 + index}_{1 if kind == 'attentions' else 0}_{rest}"
    if match := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key):
        kind, index, rest = match[1], int(match[2]), match[3]
        rest = A1111_RESNET_SUFFIXES.get(rest, rest) if kind == "resnets" else rest
        return f"diffusion_model_middle_block_{1 if kind == 'attentions' else index * 2}_{rest}"
    if match := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        block, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        rest = A1111_RESNET_SUFFIXES.get(rest, rest) if kind == "resnets" else rest
        return f"diffusion_model_output_blocks_{block * 3 + index}_{1 if kind == 'attentions' else 0}_{rest}"
    return key


def a1111_lora_modules(lora: dict[str, torch.Tensor], ldm_modules: set[str]) -> tuple[dict[str, set[str]], set[str]]:
    """networks.py load_network: each key's module, matched against the LDM model's module names
    (`named_modules()` with '.' -> '_'); returns the parts per matched module and the unmatched keys."""
    matched, failed = {}, set()
    for key in lora:
        module, part = key.split(".", 1)
        name = a1111_compvis_name(module)
        if name not in ldm_modules:
            failed.add(key)
            continue
        matched.setdefault(name, set()).add(part)
    return matched, failed


# ---- ComfyUI: comfy/utils.py unet_to_diffusers and comfy/lora.py model_lora_keys_unet + load_lora ----
COMFYUI_TRANSFORMER_WEIGHTS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")
COMFYUI_TRANSFORMER_WEIGHTS += ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
COMFYUI_TRANSFORMER_WEIGHTS += ("ff.net.0.proj", "ff.net.2")


def comfyui_unet_to_diffusers(unet_config: dict) -> dict[str, str]:
    """utils.py unet_to_diffusers, the transformer-block weights only: diffusers key -> LDM key."""
    depth, depth_output = list(unet_config["transformer_depth"]), list(unet_config["transformer_depth_output"])
    res_blocks, levels = unet_config["num_res_blocks"], len(unet_config["channel_mult"])
    mapping = {}
    for level in range(levels):
        n = 1 + (res_blocks[level] + 1) * level
        for i in range(res_blocks[level]):
            for t in range(depth.pop(0)):
                for weight in COMFYUI_TRANSFORMER_WEIGHTS:
                    mapping[f"down_blocks.{level}.attentions.{i}.transformer_blocks.{t}.{weight}.weight"] = (
                        f"input_blocks.{n}.1.transformer_blocks.{t}.{weight}.weight"
                    )
            n += 1
    for t in range(unet_config["transformer_depth_middle"]):
        for weight in COMFYUI_TRANSFORMER_WEIGHTS:
            mapping[f"mid_block.attentions.0.transformer_blocks.{t}.{weight}.weight"] = (
                f"middle_block.1.transformer_blocks.{t}.{weight}.weight"
            )
    res_blocks = list(reversed(res_blocks))
    for level in range(levels):
        n = (res_blocks[level] + 1) * level
        for i in range(res_blocks[level] + 1):
            for t in range(depth_output.pop()):
                for weight in COMFYUI_TRANSFORMER_WEIGHTS:
                    mapping[f"up_blocks.{level}.attentions.{i}.transformer_blocks.{t}.{weight}.weight"] = (
                        f"output_blocks.{n}.1.transformer_blocks.{t}.{weight}.weight"
                    )
            n += 1
    return mapping


def ldm_module_names(unet_config: dict) -> set[str]:
    """A1111's names for the LDM model's attention modules (networks.py assign_network_names_to_compvis_modules:
    `named_modules()` with '.' -> '_'), the LDM names taken from ComfyUI's map above."""
    return {
        "diffusion_model_" + key.removesuffix(".weight").replace(".", "_")
        for key in comfyui_unet_to_diffusers(unet_config).values()
    }


def comfyui_lora_patches(lora: dict[str, torch.Tensor], unet_config: dict) -> tuple[dict[str, tuple], set[str]]:
    """lora.py: the key map `lora_unet_<diffusers name with _>` -> LDM weight, then load_lora's kohya branch
    (`X.lora_up.weight`, `X.lora_down.weight`, `X.alpha`); returns the patches and the keys not loaded."""
    key_map = {}
    for diffusers_key, ldm_key in comfyui_unet_to_diffusers(unet_config).items():
        key_map["lora_unet_" + diffusers_key[: -len(".weight")].replace(".", "_")] = "diffusion_model." + ldm_key
    patches, loaded = {}, set()
    for module, weight in key_map.items():
        up, down, alpha = f"{module}.lora_up.weight", f"{module}.lora_down.weight", f"{module}.alpha"
        if up in lora:
            patches[weight] = (lora[up], lora[down], lora[alpha].item() if alpha in lora else None)
            loaded |= {up, down, alpha}
    return patches, set(lora) - loaded


def comfyui_unet_config(unet) -> dict:
    """ComfyUI's unet_config for a diffusers UNet (ComfyUI reads the same numbers off the LDM checkpoint
    in comfy/model_detection.py): res blocks per level, and transformers per res block."""
    config = unet.config
    attends = ["CrossAttn" in kind for kind in config.down_block_types]
    res_blocks = [config.layers_per_block] * len(attends)
    return {
        "num_res_blocks": res_blocks,
        "channel_mult": list(config.block_out_channels),
        "transformer_depth": [int(a) for a, n in zip(attends, res_blocks, strict=True) for _ in range(n)],
        "transformer_depth_output": [int(a) for a, n in zip(attends, res_blocks, strict=True) for _ in range(n + 1)],
        "transformer_depth_middle": 1,
    }
