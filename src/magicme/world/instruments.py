"""Measuring instruments for the miniature world: face locator, identity embedder, scene classifier.

They play the parts that a face detector, ArcFace and a CLIP scene probe play for real
videos, and are trained (on base identities only) from the world's ground truth:
- the face locator predicts a face heat map at 1/4 resolution; boxes are its blobs;
- the identity embedder reads a crop around the face and predicts each trait (head shape,
  skin, hair, eyes, accessory); its embedding is those probabilities, so an identity it
  never saw is a new combination of traits it knows, and cosine similarity compares them;
- the scene classifier names the scene, to check prompts and background leakage.
They plug into magicme as `--detector world` (Face VCD) and `--face-model world` (eval).
"""

import random
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from magicme.io.files import atomic_path
from magicme.io.video import from_uint8
from magicme.types import Box
from magicme.world import scenes
from magicme.world.model import SIZE, WORLD_MODEL

TRAITS = {"head": scenes.HEADS, "skin": tuple(scenes.SKINS), "hair": tuple(scenes.HAIRS)}
TRAITS |= {"eyes": tuple(scenes.EYES), "accessory": scenes.ACCESSORIES}
SCENE_NAMES = tuple(scenes.SCENES)
CROP = 32  # identity crops are resized to this side
CROP_FACTOR = 2.0  # a crop is this many face sizes wide: room for hair, hat and bow
THRESHOLD = 0.5


def _convs(channels: list[int], strides: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out, stride in zip(channels[:-1], channels[1:], strides, strict=True):
        layers += [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(4, c_out), nn.SiLU()]
    return nn.Sequential(*layers)


class FaceLocator(nn.Module):
    """(B, 3, 64, 64) in [0, 1] -> (B, 1, 16, 16) face logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(_convs([3, 16, 32, 32, 32], [1, 2, 2, 1]), nn.Conv2d(32, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class Classifier(nn.Module):
    """(B, 3, S, S) in [0, 1] -> (B, classes) logits; the scene classifier and the trait reader."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _convs([3, 16, 32, 64, 64], [1, 2, 2, 2]), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


@dataclass
class Examples:
    """World renders with their ground truth, for training and testing the instruments."""

    images: torch.Tensor  # (N, 3, S, S) float in [0, 1]
    face_maps: torch.Tensor  # (N, 1, S/4, S/4) float: the face box at 1/4 resolution
    scenes: torch.Tensor  # (N,) scene index
    crops: torch.Tensor  # (N, 3, CROP, CROP): jittered crops around the face
    traits: torch.Tensor  # (N, len(TRAITS)) trait indices


def render_examples(identities: list[int], count: int, seed: int) -> Examples:
    """`count` renders of the given identities at every distance, place and scene."""
    pick = random.Random(seed)
    images, maps, scene_ids, crops, traits = [], [], [], [], []
    for _ in range(count):
        who = scenes.character(pick.choice(identities))
        scene = pick.choice(SCENE_NAMES)
        scale = pick.uniform(scenes.DISTANCES["far"][1] * 0.8, scenes.DISTANCES["close"][1])
        offset = (pick.uniform(-0.3, 0.3), pick.uniform(-0.1, 0.1))
        shot = scenes.render(who, scene, SIZE, scale, offset, pick.randrange(2**30))
        image = pixels(shot.image)
        x, y, w, h = shot.face
        face_map = torch.zeros(1, SIZE, SIZE)
        face_map[:, max(y, 0) : y + h, max(x, 0) : x + w] = 1
        jitter = [pick.uniform(-0.15, 0.15) * max(w, h) for _ in range(2)]
        box = (round(x + jitter[0]), round(y + jitter[1]), w, h)
        images.append(image)
        maps.append(nn.functional.avg_pool2d(face_map, 4))
        scene_ids.append(SCENE_NAMES.index(scene))
        crops.append(face_crop(image, box, CROP_FACTOR * pick.uniform(0.85, 1.15)))
        traits.append([names.index(value) for names, value in zip(TRAITS.values(), who.traits, strict=True)])
    return Examples(
        torch.stack(images), torch.stack(maps), torch.tensor(scene_ids), torch.stack(crops), torch.tensor(traits)
    )


def face_crop(image: torch.Tensor, box: Box, factor: float = CROP_FACTOR) -> torch.Tensor:
    """(3, CROP, CROP): a square `factor` face sizes wide around the box, padded with black outside."""
    x, y, w, h = box
    side = max(2, round(max(w, h) * factor))
    left, top = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
    padded = nn.functional.pad(image, (side, side, side, side))
    crop = padded[:, top + side : top + 2 * side, left + side : left + 2 * side]
    return nn.functional.interpolate(crop[None], size=(CROP, CROP), mode="bilinear", antialias=True)[0]


class Instruments:
    """The three trained instruments, loaded from a folder of safetensors files."""

    def __init__(self, folder: Path | None = None) -> None:
        folder = Path(str(WORLD_MODEL / "instruments")) if folder is None else Path(folder)
        self.locator, self.scenes, self.traits = FaceLocator(), Classifier(len(SCENE_NAMES)), trait_reader()
        for name, net in (("face_locator", self.locator), ("scene_classifier", self.scenes), ("traits", self.traits)):
            path = folder / f"{name}.safetensors"
            if not path.is_file():
                raise FileNotFoundError(f"no {path}; train the instruments with scripts/train_world.py")
            net.load_state_dict(load_file(path))
            net.eval()

    @torch.no_grad()
    def locate_faces(self, frame: np.ndarray) -> list[Box]:
        """Face boxes (x, y, w, h) in a uint8 (H, W, 3) frame of any size: the heat map's blobs."""
        import cv2

        height, width = frame.shape[:2]
        probability = torch.sigmoid(self.locator(to_input(frame, SIZE)[None]))[0, 0]
        full = nn.functional.interpolate(probability[None, None], size=(height, width), mode="bilinear")[0, 0]
        count, _, stats, _ = cv2.connectedComponentsWithStats((full > THRESHOLD).numpy().astype(np.uint8))
        smallest = height * width / (SIZE // 4) ** 2  # one heat-map cell: smaller blobs are noise
        return [tuple(int(v) for v in s[:4]) for s in stats[1:count] if s[4] >= smallest]

    @torch.no_grad()
    def embed_face(self, frame: np.ndarray) -> torch.Tensor | None:
        """The identity embedding of the largest face in a frame, or None when there is none."""
        boxes = self.locate_faces(frame)
        if not boxes:
            return None
        return self.embed_crops(face_crop(pixels(frame), max(boxes, key=lambda b: b[2] * b[3]))[None])[0]

    def embed_faces(self, frames: Iterable[np.ndarray]) -> torch.Tensor | None:
        """(N, D): the identity embeddings of the frames that show a face; None when none does."""
        found = [embedding for frame in frames if (embedding := self.embed_face(frame)) is not None]
        return torch.stack(found) if found else None

    @torch.no_grad()
    def embed_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 3, CROP, CROP) -> (N, D) unit vectors: each trait's probabilities, concatenated."""
        logits = self.traits(crops).split([len(v) for v in TRAITS.values()], dim=1)
        return nn.functional.normalize(torch.cat([part.softmax(dim=1) for part in logits], dim=1), dim=1)

    @torch.no_grad()
    def classify_scenes(self, frames: list[np.ndarray]) -> list[str]:
        logits = self.scenes(torch.stack([to_input(frame, SIZE) for frame in frames]))
        return [SCENE_NAMES[i] for i in logits.argmax(dim=1).tolist()]

    def scene_share(self, frames: list[np.ndarray], scene: str) -> float:
        """The share of frames the scene classifier puts in `scene`."""
        named = self.classify_scenes(frames)
        return named.count(scene) / len(named)


def trait_reader() -> Classifier:
    return Classifier(sum(len(v) for v in TRAITS.values()))


def pixels(frame: np.ndarray) -> torch.Tensor:
    """A uint8 (H, W, 3) frame (or PIL image) as (3, H, W) floats in [0, 1]."""
    return from_uint8(np.asarray(frame)[None])[0]


def to_input(frame: np.ndarray, size: int) -> torch.Tensor:
    """A uint8 (H, W, 3) frame as (3, size, size) floats in [0, 1]."""
    return nn.functional.interpolate(pixels(frame)[None], size=(size, size), mode="bilinear", antialias=True)[0]


@cache
def world_instruments() -> Instruments:
    """The shipped instruments, loaded once."""
    return Instruments()


def save_instrument(net: nn.Module, path: Path) -> None:
    with atomic_path(path) as partial:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, partial)
