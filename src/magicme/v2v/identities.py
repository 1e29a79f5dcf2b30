"""Several identities in the V2V stages: each face or tile denoised with its identities' prompt.

With regions (`--region`, `--layout`, as T2V takes them), the stage's prompt holds
`{identity}`. Face VCD writes there the `<NAME>` and class word of the identity a face
resembles most (with `--reference` photos and a face model) or whose region it overlaps
most, and leaves a face matched to none. Tiled VCD writes the
identities whose regions a tile overlaps ("<alice> woman and <bob> man"), or nothing for a
tile in no region.
"""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from magicme.errors import SettingError
from magicme.eval.metrics import similarity_to_references
from magicme.identity.files import load_identity, tidy_spaces
from magicme.identity.photos import load_photos
from magicme.io.video import to_uint8
from magicme.models.loading import shared_pipeline
from magicme.registry import face_embedder
from magicme.settings import FaceSettings, ModelSettings, VideoToVideoSettings
from magicme.t2v.layout import Layout
from magicme.types import Box, Denoiser, FaceEmbedder, Frames, Place
from magicme.v2v.denoiser import make_denoiser
from magicme.v2v.faces import crop_region, owner_of

IDENTITY = "{identity}"
StageSettings = TypeVar("StageSettings", bound=VideoToVideoSettings)


def with_identity(settings: StageSettings, phrase: str) -> StageSettings:
    """The settings with `{identity}` in the prompt written as `phrase` (spaces tidied when it is empty)."""
    return dataclasses.replace(settings, prompt=tidy_spaces(settings.prompt.replace(IDENTITY, phrase)))


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


def identity_phrases(model: ModelSettings, names: list[str]) -> dict[str, str]:
    """Each named identity as a prompt names it, `<name> class word`, in the order given."""
    loaded = {}
    for spec in model.identities:
        identity = load_identity(spec)
        loaded[identity.name.lower()] = f"{identity.placeholder.lower()} {identity.class_word or ''}".strip()
    unknown = [name for name in names if name not in loaded]
    if unknown:
        raise SettingError("regions", f"<{unknown[0]}> is placed but no identity file is loaded for it; add --identity")
    return {name: loaded[name] for name in names}


def reference_faces(settings: FaceSettings, embed: FaceEmbedder, size: int) -> dict[str, torch.Tensor]:
    """Each identity's face embeddings (R, D) from its `--reference NAME=FOLDER` photos."""
    faces = {}
    for spec in settings.references:
        name, equals, folder = spec.partition("=")
        if not equals:
            raise SettingError("references", f"{spec!r}: write NAME=PHOTO_FOLDER")
        found = [
            face for photo in load_photos(Path(folder), size) if (face := embed(np.asarray(photo.image))) is not None
        ]
        if not found:
            raise SettingError("references", f"{settings.face_model} finds no face in the photos of {folder}")
        faces[name.strip("<>").lower()] = torch.stack(found)
    return faces


def most_like(frames: Frames, embed: FaceEmbedder, faces: dict[str, torch.Tensor]) -> Callable[[list[Box]], str | None]:
    """A face track's identity: the one whose reference faces its crop (at the middle frame)
    resembles most; None where the embedder finds no face in the crop."""
    images = to_uint8(frames)
    height, width = frames.shape[-2:]

    def owner(boxes: list[Box]) -> str | None:
        x, y, side = crop_region(boxes, 3.0, height, width)
        middle = len(boxes) // 2
        face = embed(np.ascontiguousarray(images[middle][y : y + side, x : x + side]))
        if face is None:
            return None
        scores = {name: float(similarity_to_references(face[None], refs)[0]) for name, refs in faces.items()}
        return max(scores, key=scores.__getitem__)

    return owner


def face_owners(
    model: ModelSettings, settings: FaceSettings, layout: Layout | None, frames: Frames
) -> Callable[[list[Box]], Denoiser | None]:
    """Each face's denoiser: that of the identity its face resembles most (with references), else of
    the identity whose region it overlaps most; None for a face matched to no identity."""
    count, _, height, width = frames.shape
    masks = {} if layout is None else layout.masks(count, height, width)
    owners = [lambda boxes: owner_of(boxes, masks)] if masks else []
    faces: dict[str, torch.Tensor] = {}
    if settings.references:
        embed = face_embedder(settings.face_model)
        if embed is None:
            raise SettingError("face_model", "matching faces by --reference needs a face model, not none")
        faces = reference_faces(settings, embed, max(height, width))
        owners.insert(0, most_like(frames, embed, faces))
    names = list(dict.fromkeys([*faces, *masks]))
    pipe = shared_pipeline(model)
    phrases = identity_phrases(model, names)
    denoisers = {name: make_denoiser(pipe, with_identity(settings, phrase)) for name, phrase in phrases.items()}

    def denoiser_for(boxes: list[Box]) -> Denoiser | None:
        for owner in owners:
            if (name := owner(boxes)) is not None:
                return denoisers[name]
        return None

    return denoiser_for


def tile_denoisers(
    model: ModelSettings, settings: VideoToVideoSettings, layout: Layout, shape: torch.Size
) -> Callable[[Place], Denoiser]:
    """Each tile's denoiser, from its place in the frame: its prompt names the identities whose
    regions the tile overlaps in any frame (one denoiser per set of identities)."""
    frames, _, height, width = shape
    masks = layout.masks(frames, height, width)
    pipe = shared_pipeline(model)
    phrases = identity_phrases(model, list(masks))
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
