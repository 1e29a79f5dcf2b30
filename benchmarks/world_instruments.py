"""The world's instruments on held-out identities: the figures the README quotes.

    python benchmarks/world_instruments.py      # a few seconds

The same measurements (magicme.world.accuracy) as tests/test_instruments.py, which
checks thresholds below these figures.
"""

import numpy as np

from magicme.world.accuracy import (
    HELD_OUT,
    boxes_in_empty_scenes,
    face_locator_ious,
    held_out_examples,
    identity_top1,
    scene_accuracy,
    trait_accuracies,
)
from magicme.world.instruments import world_instruments


def main() -> None:
    instruments = world_instruments()
    examples, frames = held_out_examples()
    print(f"scene classifier: {scene_accuracy(instruments, examples, frames):.1%} of {len(frames)} renders")
    for name, accuracy in trait_accuracies(instruments, examples).items():
        print(f"trait {name}: {accuracy:.1%}")
    ious = face_locator_ious(instruments)
    print(
        f"face locator: IoU >= 0.5 in {np.mean(np.array(ious) >= 0.5):.1%} of {len(ious)}, mean IoU {np.mean(ious):.2f}"
    )
    print(f"face locator: boxes in {boxes_in_empty_scenes(instruments)} of 30 empty scenes")
    print(f"identity embedder: top-1 among {len(HELD_OUT)} held-out identities {identity_top1(instruments):.1%}")


if __name__ == "__main__":
    main()
