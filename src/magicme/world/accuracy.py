"""How well the world's instruments do on held-out identities they never saw in training.

One definition of each figure, so the test's thresholds and the README's figures
(`python benchmarks/world_instruments.py`) measure the same thing on the same data.
"""

from functools import cache

import numpy as np
import torch

from magicme.detection import iou
from magicme.eval.metrics import cosine, similarity_to_references
from magicme.io.video import to_uint8
from magicme.world import scenes
from magicme.world.instruments import SCENE_NAMES, TRAITS, Examples, Instruments, render_examples, world_instruments

HELD_OUT = [*scenes.CHOOSE_SPLIT, *scenes.REPORT_SPLIT]  # the lineup: every held-out identity of both splits


def held_out_examples() -> tuple[Examples, list[np.ndarray]]:
    """300 renders of held-out identities, and the same as uint8 frames."""
    examples = render_examples(HELD_OUT, 300, seed=7)
    return examples, list(to_uint8(examples.images))


def scene_accuracy(instruments: Instruments, examples: Examples, frames: list[np.ndarray]) -> float:
    predicted = instruments.classify_scenes(frames)
    return float(np.mean([SCENE_NAMES[i] == p for i, p in zip(examples.scenes.tolist(), predicted, strict=True)]))


def trait_accuracies(instruments: Instruments, examples: Examples) -> dict[str, float]:
    """Per trait, the share of face crops whose trait the reader names right."""
    logits = instruments.traits(examples.crops).split([len(v) for v in TRAITS.values()], dim=1)
    return {
        name: (part.argmax(dim=1) == examples.traits[:, index]).float().mean().item()
        for index, (name, part) in enumerate(zip(TRAITS, logits, strict=True))
    }


def face_locator_ious(instruments: Instruments) -> list[float]:
    """Per far, medium and close shot of each held-out identity, the best IoU of a found box with the
    true face (0: none found)."""
    shots = [
        scenes.render(scenes.character(i), scene, 64, scale, (0.1, 0), seed=i)
        for i in HELD_OUT
        for scene in ("sky", "city", "beach")
        for scale in (0.35, 0.6, 0.95)
    ]
    return [max((iou(box, s.face) for box in instruments.locate_faces(np.asarray(s.image))), default=0) for s in shots]


def boxes_in_empty_scenes(instruments: Instruments) -> int:
    """How many of 30 scenes with nobody in them get a face box."""
    empty = [scenes.draw_scene(scene, 64, seed) for scene in scenes.SCENES for seed in range(5)]
    return sum(bool(instruments.locate_faces(np.asarray(image))) for image in empty)


def photo_embeddings(instruments: Instruments, identity: int) -> torch.Tensor:
    """(R, D): the identity embeddings of a held-out identity's photos (those where a face is found)."""
    return instruments.embed_faces(np.asarray(shot.image) for shot in scenes.identity_photos(identity))


def lineup_rank(faces: torch.Tensor | None, identity: int) -> int | None:
    """Where the identity instrument ranks `identity` among the 40 held-out ones (1: recognised,
    20.5 on average by chance), by the mean similarity of a clip's face embeddings
    (`Instruments.embed_faces`, which callers already have) to each one's photos; None when no
    frame shows a face."""
    if faces is None:
        return None
    means = {other: similarity_to_references(faces, references).mean().item() for other, references in lineup()}
    return sorted(means, key=means.__getitem__, reverse=True).index(identity) + 1


def lineup_place(faces: torch.Tensor | None, identity: int) -> int:
    """The lineup rank, with a clip in which no face is found placed last: it is not recognised."""
    return lineup_rank(faces, identity) or len(HELD_OUT)


@cache
def lineup() -> tuple[tuple[int, torch.Tensor], ...]:
    """Each held-out identity with its photos' embeddings, computed once for every video ranked."""
    return tuple((other, photo_embeddings(world_instruments(), other)) for other in HELD_OUT)


def identity_top1(instruments: Instruments) -> float:
    """Each held-out identity's photos are the reference; the share of new renders nearest their own (chance 1/20)."""
    references = [photo_embeddings(instruments, identity).mean(dim=0) for identity in HELD_OUT]
    correct = []
    for index, identity in enumerate(HELD_OUT):
        for seed, scene in enumerate(scenes.SCENES):
            shot = scenes.render(scenes.character(identity), scene, 64, 0.7, (0.05 * seed - 0.1, 0), seed=seed)
            embedding = instruments.embed_face(np.asarray(shot.image))
            correct.append(
                embedding is not None and cosine(embedding[None], torch.stack(references)).argmax().item() == index
            )
    return float(np.mean(correct))
