"""Regional identity binding: each identity's tokens act only inside its region.

A diffusers attention processor for the UNet's text cross-attention layers (not the motion
modules, whose attention runs over frames). For a query pixel outside identity i's region
in its frame, the logits of i's token positions get -inf, so those tokens get exactly zero
attention there; the rest of the prompt attends everywhere. No weight changes and no fork of
the UNet: it composes with the motion modules, FreeU (a change to the up blocks), FreeInit
and FreeNoise (whose windows run inside the motion modules: the spatial layers see every
frame) and the 3D prior (the initial latents).

The UNet's spatial layers see a batch of (copies x frames) rows, the copies in the order
the pipeline stacks them: with classifier-free guidance the negative prompt (which names no
identity) first, then the prompt.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention


@dataclass
class Binding:
    """Which text positions belong to which identity, and where each identity may act."""

    positions: list[torch.Tensor]  # per identity: (tokens,) booleans over the text positions
    masks: list[torch.Tensor]  # per identity: (frames, h, w) booleans at the latent resolution
    guided: bool  # classifier-free guidance: the first half of the batch is the negative prompt
    _biases: dict[tuple, torch.Tensor] = field(default_factory=dict)  # the same every step: made once per shape

    @property
    def frames(self) -> int:
        return self.masks[0].shape[0]

    def bias(self, rows: int, queries: int, keys: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(rows, 1, queries, keys): -inf where an identity's token meets a pixel outside its region."""
        shape = (rows, queries, keys, dtype, device)
        if shape not in self._biases:
            self._biases[shape] = self._bias(*shape)
        return self._biases[shape]

    def _bias(self, rows: int, queries: int, keys: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if rows % self.frames:
            raise ValueError(f"regional binding: {rows} rows is not a whole number of {self.frames}-frame clips")
        outside = self._outside(queries).to(device)  # (identities, frames, queries)
        tokens = torch.stack(self.positions).to(device)[:, :keys]  # (identities, keys)
        blocked = (outside[:, :, :, None] & tokens[:, None, None, :]).any(0)  # (frames, queries, keys)
        blocked = blocked.repeat(rows // self.frames, 1, 1)
        if self.guided:
            blocked[: rows // 2] = False  # the negative prompt's rows
        bias = torch.zeros(rows, 1, queries, keys, dtype=dtype, device=device)
        return bias.masked_fill_(blocked[:, None], float("-inf"))

    def _outside(self, queries: int) -> torch.Tensor:
        """(identities, frames, queries): pixels outside each region at the level of `queries` pixels."""
        height, width = layer_size(self.masks[0].shape[1:], queries)
        return ~torch.stack([_resize(mask, height, width) for mask in self.masks]).flatten(2)


def layer_size(latent: tuple[int, int] | torch.Size, queries: int) -> tuple[int, int]:
    """(h, w) of the UNet level with `queries` pixels: the latent size halved (rounding up) per level."""
    height, width = latent
    for _ in range(8):
        if height * width == queries:
            return height, width
        height, width = -(-height // 2), -(-width // 2)
    raise ValueError(f"regional binding: no UNet level of a {tuple(latent)} latent has {queries} pixels")


def _resize(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A region at a coarser level: the pixels it covers at least half of, or, where that is none,
    the ones it covers most (a small region keeps a place at every level)."""
    cover = F.interpolate(mask[:, None].float(), size=(height, width), mode="area")[:, 0]
    inside = cover >= 0.5
    empty = ~inside.flatten(1).any(1)
    if empty.any():
        most = cover[empty].flatten(1).amax(1)[:, None, None]
        inside[empty] = (cover[empty] == most) & (most > 0)
    return inside


class RegionalCrossAttention:
    """Text cross-attention (SDPA) with the binding's bias; everything else as diffusers' AttnProcessor2_0."""

    def __init__(self, binding: Binding) -> None:
        self.binding = binding

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        if encoder_hidden_states is None or attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError("regional binding expects the UNet's text cross-attention, without an attention mask")
        rows, queries, _ = hidden_states.shape
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head = key.shape[-1] // attn.heads
        query, key, value = (x.view(rows, -1, attn.heads, head).transpose(1, 2) for x in (query, key, value))
        bias = self.binding.bias(rows, queries, key.shape[2], query.dtype, query.device)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        out = out.transpose(1, 2).reshape(rows, -1, attn.heads * head).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def is_text_cross_attention(name: str) -> bool:
    """The spatial transformer blocks' `attn2` (text); the motion modules' attention is over frames."""
    return name.endswith("attn2.processor") and "motion_modules" not in name


@contextmanager
def bound_regions(unet: torch.nn.Module, binding: Binding) -> Iterator[None]:
    """The UNet with regional text cross-attention while the block runs, its own processors after."""
    saved = dict(unet.attn_processors)
    processor = RegionalCrossAttention(binding)
    unet.set_attn_processor({name: processor if is_text_cross_attention(name) else p for name, p in saved.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(saved)
