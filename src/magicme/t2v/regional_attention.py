"""Regional identity binding: inside its region, the text cross-attention reads the region's own prompt.

Masking an identity's tokens outside its region is not enough to keep identities apart: CLIP's
text encoder is causal, so every token after `<alice>` in "a photo of <alice> woman and <bob>
man on the beach" carries alice, and the end and padding tokens, which weigh much in SD, carry
both. In the miniature world that binding was no better than the shared prompt (README). So, as Mix-of-Show's
regionally controllable sampling does, each region's prompt is encoded on its own (the clip's
prompt with the other identities' names deleted, see `region_prompt`); inside its region the
UNet's text cross-attention attends to that text alone, and elsewhere to the clip's prompt with
no identity in it. An identity's tokens thus get zero attention outside its region.

Binding may start after the first steps of sampling (`Binding.start`): those read the whole prompt
everywhere, so the clip's layout forms with every subject in it before each region is told who it holds.

A diffusers attention processor for the spatial transformer blocks' text attention (not the
motion modules, whose attention runs over frames). No weight changes and no fork of the UNet:
it composes with the motion modules, FreeU (a change to the up blocks), FreeInit and FreeNoise
(whose windows run inside the motion modules: the spatial layers see every frame) and the 3D
prior (the initial latents). The spatial layers see a batch of (copies x frames) rows, the
copies in the order the pipeline stacks them: with classifier-free guidance the negative
prompt (which names no identity) first, then the prompt.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from magicme.identity.files import PLACEHOLDER, tidy_spaces


def region_prompt(prompt: str, name: str, own: str = "") -> str:
    """What identity `name`'s region reads: `prompt` (and the region's `own` prompt after it) with
    every other identity's `<NAME>` deleted, e.g. 'a photo of <alice> woman and man'."""
    text = f"{prompt}, {own}" if own else prompt
    kept = PLACEHOLDER.sub(lambda match: match.group(0) if match.group(1).lower() == name else "", text)
    return tidy_spaces(kept)


@dataclass
class Binding:
    """Each region's own prompt, encoded alone, where each region is, and from which step on."""

    texts: list[torch.Tensor]  # per region: (1, tokens, width), its prompt's text-encoder states
    masks: list[torch.Tensor]  # per region: (frames, h, w) booleans at the latent resolution
    outside: torch.Tensor  # (1, tokens, width): the clip's prompt with no identity, read outside every region
    guided: bool  # classifier-free guidance: the first half of the batch is the negative prompt
    start: float = 0.0  # the share of sampling steps, at the start, that read the whole prompt everywhere
    active: bool = field(init=False)
    _shares: dict[tuple, list[tuple[int, torch.Tensor]]] = field(default_factory=dict)  # made once per shape

    def __post_init__(self) -> None:
        self.active = self.start == 0

    @property
    def frames(self) -> int:
        return self.masks[0].shape[0]

    def step_done(self, pipe: object, step: int, timestep: object, tensors: dict) -> dict:
        """A diffusers `callback_on_step_end`: bind from the step `start` reaches on. The step after a
        pass's last is the next pass's first (FreeInit samples several times)."""
        steps = len(pipe.scheduler.timesteps)
        self.active = (step + 1) % steps >= round(self.start * steps)
        return {}

    def terms(
        self, rows: int, queries: int, dtype: torch.dtype, device: torch.device
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each text the prompt's rows read, with its share of each of their pixels, (rows, 1, queries, 1):
        a region's own text inside it (split evenly where regions overlap), `outside` where no region is."""
        shape = (rows, queries, dtype, device)
        if shape not in self._shares:
            self._shares[shape] = self._share(*shape)
        texts = [*self.texts, self.outside]
        return [(share, texts[index]) for index, share in self._shares[shape]]

    def _share(
        self, rows: int, queries: int, dtype: torch.dtype, device: torch.device
    ) -> list[tuple[int, torch.Tensor]]:
        if rows % self.frames:
            raise ValueError(f"regional binding: {rows} rows is not a whole number of {self.frames}-frame clips")
        height, width = layer_size(self.masks[0].shape[1:], queries)
        inside = torch.stack([_resize(mask, height, width) for mask in self.masks]).flatten(2).to(dtype)
        covered = inside.sum(0, keepdim=True)  # (1, frames, queries)
        shares = torch.cat([inside / covered.clamp(min=1), (covered == 0).to(dtype)])
        shares = shares.repeat(1, rows // self.frames, 1)[:, :, None, :, None].to(device)
        return [(index, share) for index, share in enumerate(shares) if share.any()]


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
    """Text cross-attention (SDPA) that reads each region's own prompt inside the region; everything
    else as diffusers' AttnProcessor2_0."""

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
        head = attn.to_q.out_features // attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (rows, tokens, heads x head) -> (rows, heads, tokens, head)
            return x.view(x.shape[0], -1, attn.heads, head).transpose(1, 2)

        def attend(query: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            """`query`'s rows attend to `text` (as many rows, or one that all of them read)."""
            context = attn.norm_encoder_hidden_states(text) if attn.norm_cross else text
            key, value = (split(project(context)).expand(len(query), -1, -1, -1) for project in (attn.to_k, attn.to_v))
            return F.scaled_dot_product_attention(query, key, value)

        query = split(attn.to_q(hidden_states))
        if not self.binding.active:
            out = attend(query, encoder_hidden_states)
        else:
            start = rows // 2 if self.binding.guided else 0  # the negative prompt's rows attend as they are
            terms = self.binding.terms(rows - start, queries, query.dtype, query.device)
            # a region's text is projected once, not per row
            out = sum(share * attend(query[start:], text.to(query.dtype)) for share, text in terms)
            if start:
                out = torch.cat([attend(query[:start], encoder_hidden_states[:start]), out])
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
