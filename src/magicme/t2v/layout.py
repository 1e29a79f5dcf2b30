"""Where each identity of a several-identity clip goes: its region, per frame.

A region is a box (fractions of the frame: x0, y0, x1, y1), a mask image, or a box track
(boxes at chosen frames, linearly interpolated between them and held before the first and
after the last), so a subject can walk across the frame. It may carry its own prompt
("<alice> woman in a red coat"), added to what that region reads (`region_prompt`).

Given on the command line as `--region NAME=SPEC` (SPEC: a named place such as `left`, four
fractions `x0,y0,x1,y1`, or a mask image), or as a JSON file (`--layout layout.json`):

    {"alice": {"box": [0, 0, 0.5, 1], "prompt": "<alice> woman in a red coat"},
     "bob": {"track": {"0": [0.5, 0, 1, 1], "15": [0.2, 0, 0.7, 1]}},
     "max_overlap": 0.25}

With no layout, a prompt that names several identities gets one of its own: side by side
for two, in thirds for three.
"""

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from magicme.errors import SettingError
from magicme.identity.files import PLACEHOLDER
from magicme.settings import FaceSettings, GenerationSettings, UpscaleSettings
from magicme.types import Place

PLACES: dict[str, Place] = {
    "left": (0.0, 0.0, 0.5, 1.0),
    "right": (0.5, 0.0, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0),
    "center": (0.25, 0.0, 0.75, 1.0),
    "left-third": (0.0, 0.0, 1 / 3, 1.0),
    "middle-third": (1 / 3, 0.0, 2 / 3, 1.0),
    "right-third": (2 / 3, 0.0, 1.0, 1.0),
    "full": (0.0, 0.0, 1.0, 1.0),
}
MAX_OVERLAP = 0.25  # the share of the smaller of two regions that they may have in common
StageSettings = TypeVar("StageSettings", FaceSettings, UpscaleSettings)
SHARED = "shared"  # the layout value for no binding: every identity's tokens everywhere, as before regions


@dataclass(frozen=True)
class Region:
    """One identity's place: a box track (a fixed box is a track of one key) or a mask image."""

    name: str
    track: dict[int, Place] = field(default_factory=dict)
    mask: str | None = None  # an image file; white is the region
    prompt: str = ""

    def box_at(self, frame: int) -> Place:
        """The box at `frame`: interpolated between the keyframes around it, held outside them."""
        keys = sorted(self.track)
        if frame <= keys[0]:
            return self.track[keys[0]]
        for start, end in itertools.pairwise(keys):
            if frame <= end:
                t = (frame - start) / (end - start)
                return tuple(a + t * (b - a) for a, b in zip(self.track[start], self.track[end], strict=True))
        return self.track[keys[-1]]

    def masks(self, frames: int, height: int, width: int) -> torch.Tensor:
        """(frames, height, width) booleans: True inside the region."""
        if self.mask is not None:
            image = Image.open(self.mask).convert("L").resize((width, height), Image.Resampling.BILINEAR)
            return torch.from_numpy(np.asarray(image) >= 128)[None].expand(frames, height, width).clone()
        ys = (torch.arange(height) + 0.5) / height  # pixel centres
        xs = (torch.arange(width) + 0.5) / width
        out = torch.zeros(frames, height, width, dtype=torch.bool)
        for frame in range(frames):
            x0, y0, x1, y1 = self.box_at(frame)
            out[frame] = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
        return out

    def record(self) -> dict[str, Any]:
        """The region as the layout file writes it (for the sidecar)."""
        place: dict[str, Any] = (
            {"mask": self.mask} if self.mask else {"track": {str(k): list(v) for k, v in self.track.items()}}
        )
        return place | ({"prompt": self.prompt} if self.prompt else {})


@dataclass(frozen=True)
class Layout:
    regions: tuple[Region, ...]
    max_overlap: float = MAX_OVERLAP

    def record(self) -> dict[str, Any]:
        return {region.name: region.record() for region in self.regions} | {"max_overlap": self.max_overlap}

    def masks(self, frames: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """Each identity's region, (frames, height, width) booleans, in the layout's order."""
        return {region.name: region.masks(frames, height, width) for region in self.regions}


def parse_box(values: Any, where: str) -> Place:
    """Four fractions x0, y0, x1, y1 inside the frame, with x0 < x1 and y0 < y1."""
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise SettingError("regions", f"{where}: a box is four numbers x0, y0, x1, y1, got {values!r}")
    try:
        box = tuple(float(value) for value in values)
    except (TypeError, ValueError):
        raise SettingError("regions", f"{where}: a box is four numbers x0, y0, x1, y1, got {values!r}") from None
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise SettingError(
            "regions",
            f"{where}: the box {list(box)} leaves the frame or is empty; give fractions of the frame with "
            "0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1",
        )
    return box  # type: ignore[return-value]


def parse_region_option(option: str) -> Region:
    """`NAME=SPEC` from `--region`: a named place, `x0,y0,x1,y1`, or a mask image."""
    name, equals, spec = option.partition("=")
    name = name.strip().strip("<>").lower()
    if not equals or not name or not spec:
        raise SettingError("regions", f"{option!r}: write NAME=PLACE, e.g. alice=left ({', '.join(PLACES)})")
    if spec in PLACES:
        return Region(name, {0: PLACES[spec]})
    if "," in spec:
        return Region(name, {0: parse_box(spec.split(","), option)})
    return Region(name, mask=_mask_file(spec, option))


def _mask_file(path: str, where: str) -> str:
    if not Path(path).is_file():
        raise SettingError(
            "regions", f"{where}: {path} is neither a place ({', '.join(PLACES)}), x0,y0,x1,y1, nor a mask image"
        )
    try:
        with Image.open(path) as image:
            if not (np.asarray(image.convert("L")) >= 128).any():
                raise SettingError("regions", f"{where}: the mask {path} has no white pixel, so no region")
    except OSError as error:
        raise SettingError("regions", f"{where}: {path} is not a readable image ({error})") from None
    return path


def parse_layout_record(record: Any, source: str) -> Layout:
    """The regions of a layout file's JSON (see the module's docstring)."""
    if not isinstance(record, dict):
        raise SettingError("layout", f"{source}: expected an object of NAME: {{box | track | mask, prompt}}")
    regions = []
    for name, spec in record.items():
        if name == "max_overlap":
            continue
        where = f"{source}: {name}"
        if not isinstance(spec, dict) or len({"box", "track", "mask"} & set(spec)) != 1:
            raise SettingError("layout", f"{where}: give one of box, track or mask")
        unknown = sorted(set(spec) - {"box", "track", "mask", "prompt"})
        if unknown:
            raise SettingError("layout", f"{where}: unknown key(s) {unknown}; use box, track, mask, prompt")
        prompt = str(spec.get("prompt", ""))
        if "mask" in spec:
            regions.append(Region(name.lower(), mask=_mask_file(str(spec["mask"]), where), prompt=prompt))
            continue
        track = spec.get("track", {"0": spec.get("box")})
        if not isinstance(track, dict) or not track:
            raise SettingError("layout", f"{where}: a track is {{FRAME: [x0, y0, x1, y1], ...}}")
        try:
            keys = {int(frame): parse_box(box, f"{where} frame {frame}") for frame, box in track.items()}
        except ValueError as error:
            if isinstance(error, SettingError):
                raise
            raise SettingError("layout", f"{where}: a track's keys are frame numbers, got {list(track)}") from None
        regions.append(Region(name.lower(), dict(sorted(keys.items())), prompt=prompt))
    overlap = record.get("max_overlap", MAX_OVERLAP)
    if not isinstance(overlap, (int, float)) or not 0 <= overlap <= 1:
        raise SettingError("layout", f"{source}: max_overlap is a share between 0 and 1, got {overlap!r}")
    return Layout(tuple(regions), float(overlap))


def read_layout(layout: str, regions: list[str]) -> Layout | None:
    """The layout the settings give (a file and `--region` options), or None for none given."""
    given: list[Region] = []
    overlap = MAX_OVERLAP
    if layout not in ("", SHARED):
        path = Path(layout)
        if not path.is_file():
            raise SettingError("layout", f"{layout} is not a file; give a layout JSON file, or `{SHARED}`")
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise SettingError("layout", f"{layout} is not valid JSON ({error})") from None
        parsed = parse_layout_record(record, layout)
        given, overlap = list(parsed.regions), parsed.max_overlap
    given += [parse_region_option(option) for option in regions]
    if not given:
        return None
    names = [region.name for region in given]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise SettingError("regions", f"<{twice[0]}> is given two regions; give each identity one")
    return Layout(tuple(given), overlap)


def automatic_layout(names: list[str]) -> Layout:
    """Side by side: an equal upright strip for each identity, left to right in prompt order."""
    count = len(names)
    return Layout(tuple(Region(name, {0: (i / count, 0.0, (i + 1) / count, 1.0)}) for i, name in enumerate(names)))


def check_layout(layout: Layout, named: list[str], masks: dict[str, torch.Tensor]) -> None:
    """Every identity the prompt names has a region, every region an identity, and no two regions
    share more than `max_overlap` of the smaller one (`masks`: the layout's at the latent size)."""
    have = {region.name for region in layout.regions}
    missing = [name for name in named if name not in have]
    if missing:
        raise SettingError(
            "regions",
            f"the prompt names <{missing[0]}> but the layout gives it no region, while it gives "
            f"{', '.join(f'<{name}>' for name in sorted(have))} one; give every identity a region",
        )
    for region in layout.regions:
        if region.name not in named and region.name.lower() not in region.prompt.lower():
            raise SettingError(
                "regions",
                f"the layout gives <{region.name}> a region, but neither the prompt nor its region's prompt names it",
            )
        if not masks[region.name].any():
            raise SettingError("regions", f"<{region.name}>'s region is smaller than one latent pixel; make it larger")
    for first, second in itertools.combinations(masks, 2):
        shared = (masks[first] & masks[second]).sum().item()
        smaller = min(masks[first].sum().item(), masks[second].sum().item())
        if shared > layout.max_overlap * smaller:
            raise SettingError(
                "regions",
                f"the regions of <{first}> and <{second}> share {shared / smaller:.0%} of the smaller one, over "
                f"the limit of {layout.max_overlap:.0%}: move them apart, or raise max_overlap in the layout file",
            )


def identities_named(prompt: str) -> list[str]:
    """The identities a prompt names, in the order it first names them."""
    return list(dict.fromkeys(name.lower() for name in PLACEHOLDER.findall(prompt)))


def choose_layout(settings: GenerationSettings) -> Layout | None:
    """The clip's regions: those the settings give, side by side for a prompt naming several
    identities, or None (no binding: one identity, or `layout: shared`)."""
    if settings.layout == SHARED:
        if settings.regions:
            raise SettingError("regions", f"`layout: {SHARED}` binds no identity to a region; drop one of the two")
        return None
    layout = read_layout(settings.layout, settings.regions)
    named = identities_named(settings.prompt)
    if layout is None and len(named) > 1:
        return automatic_layout(named)
    return layout


def with_regions_of(generation: GenerationSettings, stage: StageSettings) -> StageSettings:
    """A chain's Face VCD or Tiled VCD settings with the clip's regions, unless the stage gives its
    own: each face or tile then gets the identities placed where it is."""
    if stage.regions or stage.layout or not (layout := choose_layout(generation)):
        return stage
    if generation.layout or generation.regions:
        return dataclasses.replace(stage, layout=generation.layout, regions=list(generation.regions))
    boxes = [f"{region.name}={','.join(str(value) for value in region.box_at(0))}" for region in layout.regions]
    return dataclasses.replace(stage, regions=boxes)
