"""Who the instruments recognise where, in a clip of several learned identities side by side.

Each identity has a region (magicme's automatic layout: equal upright strips, left to right
in prompt order). In every frame the face located in a region (the largest whose centre is
in it) is recognised as whichever filmed identity its photos resemble most. Three figures,
the same for the demo and `benchmarks/world_groups.py`:
- lineup rank in its own region: the faces found in an identity's region, ranked among the
  40 held-out identities as a clip of one identity is (`lineup_place`; none found: last);
- both right: the share of frames in which every region shows a face recognised as its own;
- swapped: the share of frames in which some region shows a face recognised as another
  filmed identity.
"""

from dataclasses import dataclass

import numpy as np
import torch

from magicme.eval.metrics import similarity_to_references
from magicme.world.accuracy import lineup_place, photo_embeddings
from magicme.world.instruments import face_crop, pixels, world_instruments


@dataclass
class GroupScore:
    lineup_ranks: list[int]  # per identity, in region order
    both_right: float
    swapped: float

    def record(self) -> dict[str, object]:
        return {"lineup_ranks": self.lineup_ranks, "both_right": self.both_right, "swapped": self.swapped}


def strips(count: int, width: int) -> list[tuple[int, int]]:
    """The automatic layout's regions across a frame `width` pixels wide: [left, right) per identity."""
    return [(round(width * i / count), round(width * (i + 1) / count)) for i in range(count)]


def faces_by_region(frame: np.ndarray, regions: list[tuple[int, int]]) -> list[torch.Tensor | None]:
    """Per region, the identity embedding of the largest face centred in it, or None."""
    instruments = world_instruments()
    boxes = instruments.locate_faces(frame)
    found = []
    for left, right in regions:
        inside = [box for box in boxes if left <= box[0] + box[2] / 2 < right]
        if not inside:
            found.append(None)
            continue
        crop = face_crop(pixels(frame), max(inside, key=lambda box: box[2] * box[3]))
        found.append(instruments.embed_crops(crop[None])[0])
    return found


def score_group(frames: list[np.ndarray], identities: list[int]) -> GroupScore:
    """The three figures for a clip whose identities stand in the automatic layout's strips, in order."""
    references = [photo_embeddings(world_instruments(), identity) for identity in identities]
    regions = strips(len(identities), frames[0].shape[1])
    per_region: list[list[torch.Tensor]] = [[] for _ in identities]
    right = swapped = 0
    for frame in frames:
        faces = faces_by_region(frame, regions)
        recognised = []
        for index, face in enumerate(faces):
            if face is None:
                recognised.append(None)
                continue
            per_region[index].append(face)
            likeness = [similarity_to_references(face[None], refs)[0].item() for refs in references]
            recognised.append(int(np.argmax(likeness)))
        right += all(who == index for index, who in enumerate(recognised))
        swapped += any(who is not None and who != index for index, who in enumerate(recognised))
    ranks = [
        lineup_place(torch.stack(faces) if faces else None, identity)
        for faces, identity in zip(per_region, identities, strict=True)
    ]
    return GroupScore(ranks, right / len(frames), swapped / len(frames))
