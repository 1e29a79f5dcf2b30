"""Identity files: K learned token embeddings for one subject, and how prompts use them.

A prompt names an identity as `<NAME>`. Installing an identity adds K tokens `<NAME>`,
`<NAME>_1`, ... to the tokenizer through diffusers' `load_textual_inversion`, whose prompt
conversion expands `<NAME>` to all K tokens; nothing else in the text encoder changes.

Formats read: magicme's safetensors (tensor `embeddings` of shape (K, D) plus string
metadata) and the A1111/ComfyUI `.pt` layout `{"string_to_param": {"*": tensor[K, D]}}`,
the reference implementation's output, unpickled with `weights_only=True`.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from magicme.io.files import atomic_path

FORMAT = "magicme-identity"
FORMAT_VERSION = "1"
PLACEHOLDER = re.compile(r"<([A-Za-z0-9][A-Za-z0-9_\-]*)>")


class IdentityError(ValueError):
    """An identity file or a prompt's use of identities is wrong; the message says how to fix it."""


@dataclass
class Identity:
    """One learned subject: its placeholder name and its (K, D) token embeddings."""

    name: str
    embeddings: torch.Tensor  # (K, D)
    class_word: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    lora: Path | None = None  # a UNet LoRA trained with the tokens (diffusers format), if any

    @property
    def placeholder(self) -> str:
        return f"<{self.name}>"

    @property
    def tokens(self) -> list[str]:
        return identity_tokens(self.name, len(self.embeddings))


def identity_tokens(name: str, count: int) -> list[str]:
    """The K token strings diffusers registers for a multi-vector embedding: <alice>, <alice>_1, ..."""
    return [f"<{name}>"] + [f"<{name}>_{i}" for i in range(1, count)]


def save_identity(identity: Identity, path: Path) -> Path:
    """Write magicme's safetensors identity file atomically (a crash leaves no half file)."""
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": identity.name,
        "class_word": identity.class_word or "",
        "tokens": json.dumps(identity.tokens),
        "metadata": json.dumps(identity.metadata),
    }
    with atomic_path(path) as partial:
        save_file({"embeddings": identity.embeddings.detach().float().cpu().contiguous()}, partial, metadata)
    return path


def export_a1111(identity: Identity, path: Path) -> Path:
    """The A1111/ComfyUI layout (plain tensors, strings and ints: loads with weights_only=True)."""
    state = {
        "string_to_param": {"*": identity.embeddings.detach().float().cpu().contiguous()},
        "name": identity.name,
        "step": int(identity.metadata.get("steps_trained", 0)),
    }
    with atomic_path(path) as partial:
        torch.save(state, partial)
    return path


def export_diffusers(identity: Identity, path: Path) -> Path:
    """A file for diffusers' `pipe.load_textual_inversion(path)`: one (K, D) tensor keyed by `<NAME>`."""
    with atomic_path(path) as partial:
        save_file({identity.placeholder: identity.embeddings.detach().float().cpu().contiguous()}, partial)
    return path


def load_identity(spec: str | Path) -> Identity:
    """Load `PATH` or `NAME=PATH`; the name defaults to the file's own name (or its stem)."""
    name, _, path_text = str(spec).rpartition("=")
    path = Path(path_text)
    if not path.is_file():
        raise IdentityError(f"identity file {path} does not exist")
    if path.suffix == ".safetensors":
        identity = _load_safetensors(path)
    elif path.suffix in (".pt", ".bin"):
        identity = _load_a1111(path)
    else:
        raise IdentityError(f"{path}: unknown identity format; use a magicme .safetensors or an A1111 .pt file")
    if name:
        identity.name = name
    if lora_file := identity.metadata.get("lora"):
        identity.lora = path.parent / lora_file
        if not identity.lora.is_file():
            raise IdentityError(f"{path} was trained with a LoRA, expected as {identity.lora}; it is missing")
    if not PLACEHOLDER.fullmatch(identity.placeholder):
        raise IdentityError(f"{path}: identity name {identity.name!r} must be letters, digits, '_' or '-'")
    return identity


def _load_safetensors(path: Path) -> Identity:
    """magicme's format, or a diffusers textual-inversion file holding one tensor."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        keys = list(handle.keys())
        if metadata.get("format") != FORMAT and len(keys) == 1:
            name = keys[0].strip("<>") or path.stem
            return Identity(name, _as_matrix(handle.get_tensor(keys[0]), path))
        if metadata.get("format") != FORMAT or "embeddings" not in keys:
            raise IdentityError(
                f"{path} is neither a magicme identity (an 'embeddings' tensor with format={FORMAT} metadata) "
                "nor a one-tensor diffusers textual-inversion file"
            )
        embeddings = handle.get_tensor("embeddings")
    return Identity(
        name=metadata.get("name") or path.stem,
        embeddings=_as_matrix(embeddings, path),
        class_word=metadata.get("class_word") or None,
        metadata=json.loads(metadata.get("metadata", "{}")),
    )


def _load_a1111(path: Path) -> Identity:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure means the same to the user
        raise IdentityError(f"{path} could not be read as a plain-tensor .pt file: {error}") from error
    try:
        embeddings = state["string_to_param"]["*"]
    except (KeyError, TypeError):
        raise IdentityError(f"{path} has no ['string_to_param']['*'] tensor: not an A1111/ComfyUI embedding") from None
    return Identity(name=path.stem, embeddings=_as_matrix(embeddings, path))


def _as_matrix(embeddings: torch.Tensor, path: Path) -> torch.Tensor:
    if embeddings.ndim == 1:
        embeddings = embeddings[None]
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise IdentityError(f"{path}: expected embeddings of shape (K, D), got {tuple(embeddings.shape)}")
    return embeddings.float()


def install_identities(pipe: Any, identities: list[Identity]) -> None:
    """Add each identity's K tokens to the pipeline's tokenizer and text encoder (and its LoRA, if any)."""
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    names = [identity.name for identity in identities]
    for identity in identities:
        if names.count(identity.name) > 1:
            raise IdentityError(f"two identities are named {identity.name!r}; rename one with NAME=PATH")
        if identity.embeddings.shape[1] != width:
            raise IdentityError(
                f"identity {identity.name!r} has embeddings of width {identity.embeddings.shape[1]}, but this "
                f"text encoder's width is {width}: it was trained for another model family "
                "(768 is SD 1.5, 1024 SD 2.x, 768+1280 SDXL)"
            )
        if identity.placeholder in pipe.tokenizer.get_vocab():
            raise IdentityError(f"identity {identity.placeholder} is already loaded in this pipeline")
        pipe.load_textual_inversion(identity.embeddings, token=identity.placeholder)
        if identity.lora:
            pipe.load_lora_weights(str(identity.lora), adapter_name=lora_adapter_name(identity))


def lora_adapter_name(identity: Identity) -> str:
    return "identity_" + identity.name.replace("-", "_")


def check_placeholders(prompt: str, loaded: list[str]) -> None:
    """Every `<NAME>` in a prompt must name a loaded identity; anything else is a typo to report."""
    unknown = sorted(set(PLACEHOLDER.findall(prompt)) - set(loaded))
    if unknown:
        have = ", ".join(f"<{name}>" for name in sorted(loaded)) or "none"
        raise IdentityError(
            f"prompt names unknown identit{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(f'<{name}>' for name in unknown)}; loaded: {have}. "
            "Load one with `identities` (NAME=PATH)."
        )
