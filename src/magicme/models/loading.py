"""Loading an SD-1.5 + AnimateDiff pipeline from hub ids, local folders or single files.

Single-file checkpoints (community fine-tunes such as Realistic Vision, or the original
`mm_sd_v15_v2.ckpt`) are read with configs shipped in `magicme/configs`, so nothing is
fetched from a hub when every weight is local. `shared_pipeline` keeps the last pipeline
loaded, so a chain's stages and the studio's renders load one set of weights, not one per stage.
"""

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

import torch
from diffusers import (
    AnimateDiffPipeline,
    MotionAdapter,
    StableDiffusionPipeline,
)
from huggingface_hub import hf_hub_download
from safetensors import SafetensorError, safe_open

from magicme.identity.files import install_identities, load_identity, lora_adapter_name
from magicme.io.files import read_tensor_file
from magicme.models.motion_lora import ADAPTER as MOTION_ADAPTER
from magicme.models.motion_lora import load_motion_lora
from magicme.settings import DTYPES, ModelSettings

CONFIGS = files("magicme") / "configs"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
# The UNet key of an original-layout (LDM) checkpoint, and the keys that mark its relatives.
LDM_UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
MOTION_MID_BLOCK = "mid_block.motion_modules."  # AnimateDiff v2 and v3 have one, v1 has none
OTHER_FAMILIES = {
    "conditioner.embedders": "SDXL",
    "cond_stage_model.model.": "SD 2.x",
    "model.diffusion_model.joint": "SD 3",
}


# One file of a hub repository, as its page shows it (the published single files, e.g. Lightning's).
HUB_FILE = re.compile(
    r"^https://huggingface\.co/(?P<repo>[^/]+/[^/]+)/(?:blob|resolve)/(?P<revision>[^/]+)/(?P<file>.+)$"
)
LORA_ADAPTER = "lora"


class ModelLoadError(ValueError):
    """A model path or checkpoint cannot be used; the message says what to give instead."""


def local_source(source: str, what: str) -> str:
    """A hub file's address fetched into the hub cache (its local path); any other source as given."""
    match = HUB_FILE.match(source)
    if match is None:
        return source
    try:
        return hf_hub_download(match["repo"], match["file"], revision=match["revision"])
    except (OSError, ValueError) as error:  # the hub's not-found and offline errors are both
        raise ModelLoadError(
            f"{what} {source} could not be fetched ({type(error).__name__}) and is not in the local cache; "
            f"fetch it once with network access (`huggingface-cli download {match['repo']} {match['file']}`) "
            "and pass the downloaded file"
        ) from None


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """fp16 on CUDA by default (half the memory, same quality); fp32 where half is slow or absent."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {DTYPES}")
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _is_single_file(source: str) -> bool:
    return Path(source).suffix in SINGLE_FILE_SUFFIXES


def _check_exists(source: str, what: str) -> None:
    """A path-like source that is missing is a typo, not a hub id: say so before any network call."""
    looks_local = _is_single_file(source) or source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local and not Path(source).expanduser().exists():
        raise ModelLoadError(f"{what} {source} does not exist; give a hub id, a local diffusers folder or a file")


@contextmanager
def _hub_errors(source: str, what: str) -> Iterator[None]:
    """A hub id that cannot be fetched is the user's to fix: say how, not with a traceback."""
    try:
        yield
    except (OSError, KeyError) as error:  # a folder whose model_index.json lacks a key raises KeyError
        if Path(source).expanduser().is_dir():
            raise ModelLoadError(f"{what} folder {source} is not a diffusers model folder: {error}") from None
        if isinstance(error, KeyError):  # not a folder's fault: a bug, not a missing download
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        fix = (
            "the hub is off (HF_HUB_OFFLINE is set): fetch it once with network access "
            f"(`huggingface-cli download {source}`), or give a local folder or file"
            if offline
            else "check the id, your network, and that you may read it (`huggingface-cli login`)"
        )
        raise ModelLoadError(f"{what} {source} could not be loaded and is not in the local cache; {fix}") from None


@contextmanager
def _single_file_errors(path: str, what: str) -> Iterator[None]:
    """diffusers reports every unreadable single file as one OSError; read the file to say which fault it is."""
    try:
        yield
    except (OSError, SafetensorError) as error:
        try:
            read_tensor_file(Path(path).expanduser())  # only on failure: says "holds code" or "truncated"
        except ValueError as reason:
            raise ModelLoadError(f"{what} {reason}") from None
        raise ModelLoadError(f"{what} {path} could not be loaded: {error}") from None


def check_sd15_checkpoint(path: Path) -> None:
    """Refuse checkpoints of another family before diffusers fails deep inside conversion."""
    if path.suffix != ".safetensors":
        return  # pickled checkpoints are only readable by loading them; diffusers does so safely
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(f"{path} is not a readable safetensors file (truncated or corrupt?): {error}") from None
    for prefix, family in OTHER_FAMILIES.items():
        if any(key.startswith(prefix) for key in keys):
            raise ModelLoadError(f"{path} is an {family} checkpoint; magicme needs an SD-1.5-family checkpoint")
    if LDM_UNET_KEY not in keys:
        raise ModelLoadError(
            f"{path} is not an SD-1.5 checkpoint in the original single-file layout (no {LDM_UNET_KEY}); "
            "for a diffusers folder pass the folder itself"
        )


def load_motion_adapter(source: str, dtype: torch.dtype) -> MotionAdapter:
    """Folders and hub ids carry their config; original files get v1's or v2's by their keys."""
    _check_exists(source, "motion adapter")
    if not _is_single_file(source):
        with _hub_errors(source, "motion adapter"):
            return MotionAdapter.from_pretrained(source, dtype=dtype)
    try:
        checkpoint, _ = read_tensor_file(Path(source).expanduser())  # safetensors, or torch.load(weights_only=True)
    except ValueError as reason:
        raise ModelLoadError(f"motion adapter {reason}") from None
    checkpoint = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else {}
    if not any(".motion_modules." in key for key in checkpoint):
        raise ModelLoadError(f"{source} holds no AnimateDiff motion modules; is it a base model or a LoRA?")
    version = "v2" if any(key.startswith(MOTION_MID_BLOCK) for key in checkpoint) else "v1"
    config = str(CONFIGS / f"motion_adapter_v15_{version}")
    return MotionAdapter.from_single_file(checkpoint, config=config, dtype=dtype)


def load_image_pipeline(base_model: str, dtype: torch.dtype) -> StableDiffusionPipeline:
    """The SD-1.5 image model (text encoder, UNet, VAE) from a hub id, a folder or a single file."""
    _check_exists(base_model, "base model")
    if not _is_single_file(base_model):
        with _hub_errors(base_model, "base model"):
            return StableDiffusionPipeline.from_pretrained(
                base_model, dtype=dtype, safety_checker=None, requires_safety_checker=False
            )
    check_sd15_checkpoint(Path(base_model))
    with _single_file_errors(base_model, "base model"):
        return StableDiffusionPipeline.from_single_file(
            base_model, config=str(CONFIGS / "sd15"), dtype=dtype, safety_checker=None, requires_safety_checker=False
        )


def load_lora(pipe: AnimateDiffPipeline, source: str) -> None:
    """An image-model LoRA (such as AnimateLCM's) as the adapter `lora`; a file is read without
    unpickling code, and one that matches no layer is refused rather than ignored."""
    _check_exists(source, "LoRA")
    weights: str | dict = source
    if Path(source).expanduser().is_file():
        try:
            weights, _ = read_tensor_file(Path(source).expanduser())
        except ValueError as reason:
            raise ModelLoadError(f"LoRA {reason}") from None
    unfit = f"LoRA {source} does not fit the SD-1.5 UNet or text encoder (is it a LoRA for SD-1.5?)"
    try:
        with _hub_errors(source, "LoRA"):
            pipe.load_lora_weights(weights, adapter_name=LORA_ADAPTER)
    except (KeyError, ValueError) as error:  # peft: no module matched; diffusers: an unknown key layout
        raise ModelLoadError(f"{unfit}: {error}") from None
    if not any(LORA_ADAPTER in names for names in pipe.get_list_adapters().values()):
        raise ModelLoadError(unfit)


def load_pipeline(settings: ModelSettings) -> AnimateDiffPipeline:
    """Build the T2V pipeline: base SD-1.5 weights, a motion adapter, and the identities to use."""
    identities = [load_identity(spec) for spec in settings.identities]  # a bad file fails in a second, not a minute
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    image_pipe = load_image_pipeline(local_source(settings.base_model, "base model"), dtype)
    adapter = load_motion_adapter(local_source(settings.motion_adapter, "motion adapter"), dtype)
    pipe = AnimateDiffPipeline.from_pipe(image_pipe, motion_adapter=adapter, dtype=dtype)
    install_identities(pipe, identities)
    adapters = {lora_adapter_name(identity): 1.0 for identity in identities if identity.lora}
    if settings.motion_lora:
        source = local_source(settings.motion_lora, "motion LoRA")
        _check_exists(source, "motion LoRA")
        with _hub_errors(source, "motion LoRA"):
            load_motion_lora(pipe, source)
        adapters[MOTION_ADAPTER] = settings.motion_lora_scale
    if settings.lora:
        load_lora(pipe, local_source(settings.lora, "LoRA"))
        adapters[LORA_ADAPTER] = settings.lora_scale
    if adapters:
        pipe.set_adapters(list(adapters), list(adapters.values()))
    if settings.vae_slicing:
        pipe.vae.enable_slicing()
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    if settings.compile_unet:
        pipe.unet = torch.compile(pipe.unet)
    if settings.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(desc="denoising", leave=False)
    return pipe


_shared: dict[str, AnimateDiffPipeline] = {}  # at most one: a second set of SD weights is gigabytes


def _file_stamps(source: str) -> list[tuple[str, int, int]]:
    """(path, modified, size) of a local weight file or of every file in a local folder; [] for a hub id."""
    path = Path(source).expanduser()
    found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    return [(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in found]


def shared_pipeline(settings: ModelSettings) -> AnimateDiffPipeline:
    """`load_pipeline(settings)`, reused while the settings and every local file they name are unchanged
    (an identity retrained under the same path loads again). Each job sets its own sampler and
    features on the pipeline, so reusing it gives the same frames as loading it afresh."""
    sources = [settings.base_model, settings.motion_adapter, settings.motion_lora, settings.lora]
    sources += [spec.rpartition("=")[2] for spec in settings.identities]
    key = json.dumps([dataclasses.asdict(settings), [_file_stamps(source) for source in sources if source]])
    if key not in _shared:
        _shared.clear()  # free the old weights before loading new ones
        _shared[key] = load_pipeline(settings)
    return _shared[key]
