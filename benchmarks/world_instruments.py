"""The world's instruments on held-out identities: the figures the README quotes.

    python benchmarks/world_instruments.py      # a few seconds

Same data as tests/test_instruments.py, which checks thresholds below these figures.
"""

import numpy as np
import torch

from magicme import world
from magicme.instruments import SCENE_NAMES, TRAITS, render_examples, world_instruments
from magicme.metrics import cosine

HELD_OUT = list(range(world.HELD_OUT_START, world.HELD_OUT_START + 20))


def iou(a: tuple, b: tuple) -> float:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0, width) * max(0, height)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def main() -> None:
    instruments = world_instruments()
    examples = render_examples(HELD_OUT, 300, seed=7)
    frames = [(image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for image in examples.images]
    predicted = instruments.classify_scenes(frames)
    truth = [SCENE_NAMES[i] for i in examples.scenes.tolist()]
    print(f"scene classifier: {np.mean([p == t for p, t in zip(predicted, truth, strict=True)]):.1%} of 300 renders")
    logits = instruments.traits(examples.crops).split([len(v) for v in TRAITS.values()], dim=1)
    for index, (name, part) in enumerate(zip(TRAITS, logits, strict=True)):
        print(f"trait {name}: {(part.argmax(dim=1) == examples.traits[:, index]).float().mean().item():.1%}")
    shots = [
        world.render(world.character(i), scene, 64, scale, (0.1, 0), seed=i)
        for i in HELD_OUT
        for scene in ("sky", "city", "beach")
        for scale in (0.35, 0.6, 0.95)
    ]
    hits = [max((iou(b, s.face) for b in instruments.locate_faces(np.asarray(s.image))), default=0) for s in shots]
    print(
        f"face locator: IoU >= 0.5 in {np.mean(np.array(hits) >= 0.5):.1%} of {len(shots)},"
        f" mean IoU {np.mean(hits):.2f}"
    )
    empty = [world.draw_scene(scene, 64, seed) for scene in world.SCENES for seed in range(5)]
    print(
        f"face locator: boxes in {sum(bool(instruments.locate_faces(np.asarray(i))) for i in empty)} of 30 empty scenes"
    )
    references = []
    for identity in HELD_OUT:
        embedded = [instruments.embed_face(np.asarray(shot.image)) for shot in world.identity_photos(identity)]
        references.append(torch.stack([e for e in embedded if e is not None]).mean(dim=0))
    correct = []
    for index, identity in enumerate(HELD_OUT):
        for seed, scene in enumerate(world.SCENES):
            shot = world.render(world.character(identity), scene, 64, 0.7, (0.05 * seed - 0.1, 0), seed=seed)
            embedding = instruments.embed_face(np.asarray(shot.image))
            correct.append(embedding is not None and cosine(embedding[None], torch.stack(references)).argmax() == index)
    print(f"identity embedder: top-1 among 20 held-out identities {np.mean(correct):.1%}")


if __name__ == "__main__":
    main()
