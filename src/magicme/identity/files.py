"""Identity files: K learned token embeddings for one subject, and how prompts use them.

A prompt names an identity as `<NAME>`. Installing an identity adds K tokens `<NAME>`,
`<NAME>_1`, ... to the tokenizer through diffusers' `load_textual_inversion`, whose prompt
conversion expands `<NAME>` to all K tokens; nothing else in the text encoder changes.

magicme's own file is a safetensors file holding one (K, D) tensor keyed by `<NAME>`, with
the name, class word and training settings as string metadata: stock diffusers registers
it as `<NAME>` without `token=`, and A1111 and ComfyUI read it as a one-tensor embedding.
Formats read, by content: that file (and its first version, whose tensor was keyed
`embeddings`), the A1111/ComfyUI layout `{"string_to_param": {"*": tensor[K, D]}}` (the
reference implementation's output), `emb_params`, diffusers' one-key files and bare
tensors; pickles are read with `weights_only=True`, so a file carrying code is refused.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from magicme.errors import SettingError
from magicme.identity.lora import export_lora
from magicme.io.files import atomic_path, read_tensor_file

FORMAT = "magicme-identity"
FORMAT_VERSION = "2"  # 1 keyed the tensor `embeddings`; 2 keys it `<NAME>`
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
        return identity_tokens(self.name, 1)[0]

    @property
    def tokens(self) -> list[str]:
        return identity_tokens(self.name, len(self.embeddings))


def identity_tokens(name: str, count: int) -> list[str]:
    """The K token strings diffusers registers for a multi-vector embedding: <alice>, <alice>_1, ...

    Lower case whatever the name's case: CLIP's tokenizer lowercases every prompt, so `<Alice>`
    in a prompt reaches the tokenizer as `<alice>` (and `lowercase_placeholders` makes the
    prompt itself agree, for diffusers' expansion of `<alice>` into all K tokens).
    """
    name = name.lower()
    return [f"<{name}>"] + [f"<{name}>_{i}" for i in range(1, count)]


def lowercase_placeholders(prompt: str) -> str:
    """`<Alice>` -> `<alice>`: the form the identity's tokens are registered in."""
    return PLACEHOLDER.sub(lambda match: match.group(0).lower(), prompt)


def tidy_spaces(prompt: str) -> str:
    """A prompt with words cut out of it, tidied: single spaces, none before a comma."""
    return " ".join(prompt.split()).replace(" ,", ",")


def save_identity(identity: Identity, path: Path) -> Path:
    """Write magicme's safetensors identity file atomically (a crash leaves no half file).

    The tensor is keyed by `<NAME>`, so each consumer reads the file as it is (see the module doc).
    """
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": identity.name,
        "class_word": identity.class_word or "",
        "tokens": json.dumps(identity.tokens),
        "metadata": json.dumps(identity.metadata),
    }
    with atomic_path(path) as partial:
        save_file({identity.placeholder: identity.embeddings.detach().float().cpu().contiguous()}, partial, metadata)
    return path


def export_a1111(identity: Identity, path: Path) -> Path:
    """The A1111/ComfyUI layout (plain tensors, strings and ints: loads with weights_only=True).

    Written in torch's legacy (non-zip) serialisation: a stock A1111 rejects the zip entries
    current torch writes, and the zip's folder would be named after the temporary file.
    A1111 and ComfyUI name the embedding by its file name; diffusers takes `name` as the token,
    so it is `<NAME>` rather than a plain word the vocabulary already has.
    """
    state = {
        "string_to_param": {"*": identity.embeddings.detach().float().cpu().contiguous()},
        "name": identity.placeholder,
        "step": int(identity.metadata.get("steps_trained", 0)),
    }
    with atomic_path(path) as partial:
        torch.save(state, partial, _use_new_zipfile_serialization=False)
    return path


def export_diffusers(identity: Identity, path: Path) -> Path:
    """A file for diffusers' `pipe.load_textual_inversion(path)`: one (K, D) tensor keyed by `<NAME>`."""
    with atomic_path(path) as partial:
        save_file({identity.placeholder: identity.embeddings.detach().float().cpu().contiguous()}, partial)
    return path


LAYOUTS = ("magicme", "a1111", "diffusers")
DEFAULT_LAYOUTS = {".safetensors": "magicme", ".pt": "a1111", ".bin": "diffusers"}


def convert_identity(
    source: str | Path, output: Path, layout: str | None = None, class_word: str | None = None
) -> Path:
    """Write the identity in `source` (any layout `load_identity` reads) in another layout.

    `layout` defaults by `output`'s suffix: magicme for `.safetensors`, A1111/ComfyUI for `.pt`,
    diffusers' `{"<name>": tensor}` for `.bin` (a pickle, as sd-concepts files are) or for a
    `.safetensors` asked for with layout diffusers. A LoRA trained with the identity is written
    beside the output as `STEM.lora.safetensors` in kohya's layout, which every tool reads.
    """
    output = Path(output)
    layout = layout or DEFAULT_LAYOUTS.get(output.suffix)
    if layout not in LAYOUTS:
        raise SettingError("layout", f"give one of {LAYOUTS} for {output.name}, or end it in .safetensors, .pt, .bin")
    identity = load_identity(source)
    identity.class_word = class_word or identity.class_word
    if identity.lora:
        lora = export_lora(identity.lora, output.with_name(f"{output.stem}.lora.safetensors"))
        identity.metadata["lora"] = lora.name
    if layout == "magicme":
        if output.suffix != ".safetensors":
            raise ValueError(f"magicme's layout is a .safetensors file, not {output.name}")
        return save_identity(identity, output)
    if layout == "a1111":
        return export_a1111(identity, output)
    if output.suffix == ".safetensors":
        return export_diffusers(identity, output)
    with atomic_path(output) as partial:
        state = {identity.placeholder: identity.embeddings.detach().float().cpu()}
        torch.save(state, partial, _use_new_zipfile_serialization=False)
    return output


def load_identity(spec: str | Path) -> Identity:
    """Load `PATH` or `NAME=PATH`; the name defaults to the file's own name (or its stem).

    The layout is read from the content, not the suffix, as diffusers' loader does: magicme's
    safetensors, A1111/ComfyUI `string_to_param`, kohya/ComfyUI `emb_params`, diffusers'
    one-key `{"<token>": tensor}` (sd-concepts' `learned_embeds.bin`) and a bare tensor, in
    `.safetensors`, `.pt` or `.bin` files alike.
    """
    name, _, path_text = str(spec).rpartition("=")
    path = Path(path_text)
    if not path.is_file():
        raise IdentityError(f"identity file {path} does not exist")
    identity = identity_from_content(*read_identity_file(path), path)
    if name:
        identity.name = name
    if lora_file := identity.metadata.get("lora"):
        if not isinstance(lora_file, str) or Path(lora_file).name != lora_file or lora_file in (".", ".."):
            raise IdentityError(  # identity files are untrusted: they may only name a file beside themselves
                f"{path} names its LoRA as {lora_file!r}; an identity's LoRA must be a file name in its own folder"
            )
        identity.lora = path.parent / lora_file
        if not identity.lora.is_file():
            raise IdentityError(f"{path} was trained with a LoRA, expected as {identity.lora}; it is missing")
        read_identity_file(identity.lora)  # refuses a LoRA that is unreadable or carries code, before any model loads
    if not PLACEHOLDER.fullmatch(identity.placeholder):
        raise IdentityError(f"{path}: identity name {identity.name!r} must be letters, digits, '_' or '-'")
    return identity


def read_identity_file(path: Path) -> tuple[Any, dict[str, str]]:
    """The file's content (a mapping, or a bare tensor) and its safetensors metadata (none for a pickle)."""
    try:
        return read_tensor_file(path)
    except ValueError as error:
        raise IdentityError(str(error)) from None


def identity_from_content(content: Any, metadata: dict[str, str], path: Path) -> Identity:
    """Recognise the layouts identity files come in, by their keys."""
    if metadata.get("format") == FORMAT and len(content) == 1:
        return Identity(
            name=metadata.get("name") or path.stem,
            embeddings=_as_matrix(next(iter(content.values())), path),
            class_word=metadata.get("class_word") or None,
            metadata=json.loads(metadata.get("metadata", "{}")),
        )
    if isinstance(content, torch.Tensor):  # a bare tensor, as ComfyUI accepts
        return Identity(path.stem, _as_matrix(content, path))
    if not isinstance(content, dict):
        raise IdentityError(f"{path} holds a {type(content).__name__}, not token embeddings")
    if {"clip_l", "clip_g"} <= set(content):
        raise IdentityError(
            f"{path} is an SDXL embedding (clip_l of width 768 and clip_g of width 1280); "
            "magicme uses SD-1.5-family models, whose text encoder is 768 wide"
        )
    if isinstance(content.get("string_to_param"), dict) and len(content["string_to_param"]) == 1:
        return Identity(path.stem, _as_matrix(next(iter(content["string_to_param"].values())), path))  # A1111
    if isinstance(content.get("emb_params"), torch.Tensor):  # kohya, Civitai
        return Identity(path.stem, _as_matrix(content["emb_params"], path))
    tensors = {key: value for key, value in content.items() if isinstance(value, torch.Tensor)}
    if len(content) == 1 and len(tensors) == 1:  # diffusers: {"<token>": tensor}
        key, embeddings = next(iter(tensors.items()))
        token = key.strip("<>")  # a token that is no usable name (`*`, `emb`...) gives way to the file's stem
        return Identity(token if PLACEHOLDER.fullmatch(f"<{token}>") else path.stem, _as_matrix(embeddings, path))
    raise IdentityError(
        f"{path} holds keys {sorted(map(str, content))[:8]}: not an identity layout magicme knows (magicme "
        "safetensors, A1111/ComfyUI string_to_param, emb_params, or a one-tensor diffusers file)"
    )


def _as_matrix(embeddings: torch.Tensor, path: Path) -> torch.Tensor:
    if embeddings.ndim == 1:
        embeddings = embeddings[None]
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise IdentityError(f"{path}: expected embeddings of shape (K, D), got {tuple(embeddings.shape)}")
    if not torch.isfinite(embeddings).all():
        raise IdentityError(f"{path} holds NaN or infinite values: the training that wrote it diverged; retrain it")
    return embeddings.float()


def install_identities(pipe: Any, identities: list[Identity]) -> None:
    """Add each identity's K tokens to the pipeline's tokenizer and text encoder (and its LoRA, if any)."""
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    placeholders = [identity.placeholder for identity in identities]
    for identity in identities:
        if placeholders.count(identity.placeholder) > 1:
            raise IdentityError(
                f"two identities are named {identity.placeholder} (names ignore case); rename one as NAME=PATH"
            )
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


def check_prompt_fits(pipe: Any, prompt: str) -> None:
    """Refuse a prompt whose identity tokens fall past the text encoder's 77 positions.

    diffusers expands `<NAME>` into its K tokens; past the limit the tokenizer cuts them away
    with only a generic warning, and the video silently loses the identity.
    """
    tokenizer = pipe.tokenizer
    ids = tokenizer(pipe.maybe_convert_prompt(prompt, tokenizer)).input_ids  # with the start and end tokens
    limit = tokenizer.model_max_length
    cut = set(ids[limit - 1 : -1])  # the end token takes the last place kept
    lost = sorted(token for token, token_id in tokenizer.get_added_vocab().items() if token_id in cut)
    if lost:
        raise IdentityError(
            f"the prompt is {len(ids)} tokens once its identities are expanded, but the text encoder reads {limit}: "
            f"identity tokens {', '.join(lost)} would be cut off. Shorten the prompt, or name the identity earlier."
        )


def check_placeholders(prompt: str, loaded: list[str]) -> None:
    """Every `<NAME>` in a prompt must name a loaded identity; anything else is a typo to report."""
    unknown = sorted({name.lower() for name in PLACEHOLDER.findall(prompt)} - set(loaded))
    if unknown:
        have = ", ".join(f"<{name}>" for name in sorted(loaded)) or "none"
        raise IdentityError(
            f"prompt names unknown identit{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(f'<{name}>' for name in unknown)}; loaded: {have}. "
            "Load one with `identities` (NAME=PATH)."
        )
