"""Several identities in the V2V stages: each face or tile denoised with its identities' prompt.

With regions (`--region`, `--layout`, as T2V takes them), the stage's prompt holds
`{identity}`. Face VCD writes there the `<NAME>` and class word of the identity whose
region a face overlaps most, and leaves a face in no region. Tiled VCD writes the
identities whose regions a tile overlaps ("<alice> woman and <bob> man"), or nothing for a
tile in no region.
"""

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import torch

from magicme.errors import SettingError
from magicme.identity.files import load_identity
from magicme.models.loading import shared_pipeline
from magicme.settings import ModelSettings, VideoToVideoSettings
from magicme.t2v.layout import Layout
from magicme.types import Box, Denoiser, Place
from magicme.v2v.denoiser import make_denoiser
from magicme.v2v.faces import owner_of

IDENTITY = "{identity}"
StageSettings = TypeVar("StageSettings", bound=VideoToVideoSettings)


def with_identity(settings: StageSettings, phrase: str) -> StageSettings:
    """The settings with `{identity}` in the prompt written as `phrase` (spaces tidied when it is empty)."""
    prompt = " ".join(settings.prompt.replace(IDENTITY, phrase).split()).replace(" ,", ",")
    return dataclasses.replace(settings, prompt=prompt)


def identity_free(settings: StageSettings) -> StageSettings:
    """The settings with no identity in the prompt: what loads the stage's denoiser (and checks the
    prompt) before each face or tile gets its identities."""
    if IDENTITY not in settings.prompt:
        raise SettingError(
            "prompt",
            f"with regions, write {IDENTITY} where each face's or tile's identities go, e.g. "
            f"'close up photo of {IDENTITY}'",
        )
    return with_identity(settings, "")


def identity_phrases(model: ModelSettings, layout: Layout) -> dict[str, str]:
    """Each region's identity as the prompt names it: `<name> class word`, in the layout's order."""
    loaded = {}
    for spec in model.identities:
        identity = load_identity(spec)
        loaded[identity.name.lower()] = f"{identity.placeholder.lower()} {identity.class_word or ''}".strip()
    unknown = [region.name for region in layout.regions if region.name not in loaded]
    if unknown:
        raise SettingError(
            "regions", f"<{unknown[0]}> has a region but no identity file loaded; add it with --identity"
        )
    return {region.name: loaded[region.name] for region in layout.regions}


def face_owners(
    model: ModelSettings, settings: VideoToVideoSettings, layout: Layout, shape: torch.Size
) -> Callable[[list[Box]], Denoiser | None]:
    """Each face's denoiser: that of the identity whose region its boxes overlap most; None for a
    face in no region."""
    frames, _, height, width = shape
    masks = {region.name: region.masks(frames, height, width) for region in layout.regions}
    pipe = shared_pipeline(model)
    phrases = identity_phrases(model, layout)
    denoisers = {name: make_denoiser(pipe, with_identity(settings, phrase)) for name, phrase in phrases.items()}
    return lambda boxes: denoisers.get(owner_of(boxes, masks))


def tile_denoisers(
    model: ModelSettings, settings: VideoToVideoSettings, layout: Layout, shape: torch.Size
) -> Callable[[Place], Denoiser]:
    """Each tile's denoiser, from its place in the frame: its prompt names the identities whose
    regions the tile overlaps in any frame (one denoiser per set of identities)."""
    frames, _, height, width = shape
    masks = {region.name: region.masks(frames, height, width) for region in layout.regions}
    pipe = shared_pipeline(model)
    phrases = identity_phrases(model, layout)
    denoisers: dict[tuple[str, ...], Denoiser] = {}

    def for_tile(place: Place) -> Denoiser:
        x0, y0, x1, y1 = place
        rows = slice(int(y0 * height), max(int(y0 * height) + 1, round(y1 * height)))
        columns = slice(int(x0 * width), max(int(x0 * width) + 1, round(x1 * width)))
        names = tuple(name for name, mask in masks.items() if mask[:, rows, columns].any())
        if names not in denoisers:
            phrase = " and ".join(phrases[name] for name in names)
            denoisers[names] = make_denoiser(pipe, with_identity(settings, phrase))
        return denoisers[names]

    return for_tile
