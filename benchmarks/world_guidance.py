"""Which classifier-free guidance scale the world model draws identities best at.

    python benchmarks/world_guidance.py            # about 5 minutes on 2 CPU cores

No learning: each held-out identity is prompted by its traits in words ("a close up photo of
a person with pale skin, ... on the snow"), at medium distance and close up, so the sweep
measures the model's own drawing, not an ID module. Per guidance scale: the identity
similarity of the frames' faces to the identity's photos, the share of frames with a face
found, and the lineup rank (where the instrument ranks the identity among the 40 held-out
ones; 1: recognised, a clip with no face found counts as 40). The chosen scale is
`magicme.world.recipe.RECIPE.guidance`. Writes benchmarks/results-world-guidance.json and prints
the Markdown table.
"""

import argparse
import statistics
import time
from pathlib import Path

from diffusers import AnimateDiffPipeline
from record import add_steps_option, recipe_with_steps, write_record

from magicme.eval.metrics import similarity_to_references
from magicme.io.video import to_uint8
from magicme.models.loading import load_pipeline
from magicme.settings import ModelSettings
from magicme.t2v.generate import generate
from magicme.world import scenes
from magicme.world.accuracy import lineup_place, photo_embeddings
from magicme.world.instruments import world_instruments
from magicme.world.model import world_model_paths
from magicme.world.recipe import WorldRecipe, choosing_split

HERE = Path(__file__).resolve().parent
SCALES = (2.0, 3.0, 5.0, 7.5)


def measure(recipe: WorldRecipe, pipe: AnimateDiffPipeline, scale: float, identities: list[int]) -> dict[str, float]:
    """Mean identity similarity, face-found share and lineup rank over the identities' clips at `scale`."""
    instruments, similarities, found, ranks = world_instruments(), [], [], []
    for identity in identities:
        who, scene = scenes.character(identity), list(scenes.SCENES)[(identity + 3) % len(scenes.SCENES)]
        references = photo_embeddings(instruments, identity)
        for distance in ("medium", "close"):
            text = scenes.caption(who, scene, distance)
            video = recipe.generation(text, guidance_scale=scale)
            frames = to_uint8(generate(pipe, video))
            faces = instruments.embed_faces(frames)
            found.append(0 if faces is None else len(faces) / len(frames))
            if faces is not None:
                similarities += similarity_to_references(faces, references).tolist()
            ranks.append(lineup_place(faces, identity))
    return {
        "identity": statistics.mean(similarities) if similarities else 0.0,
        "face_found": statistics.mean(found),
        "rank": statistics.mean(ranks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=6, help="held-out identities to prompt")
    parser.add_argument("--scales", type=float, nargs="+", default=SCALES, help="guidance scales to compare")
    parser.add_argument("--output", type=Path, default=HERE / "results-world-guidance.json")
    add_steps_option(parser)
    args = parser.parse_args()
    recipe = recipe_with_steps(args)  # every clip samples with it: `--inference-steps` changes them all
    started = time.perf_counter()
    identities = choosing_split(args.identities)
    base, motion = world_model_paths()
    pipe = load_pipeline(ModelSettings(base_model=str(base), motion_adapter=str(motion)))
    results = {str(scale): measure(recipe, pipe, scale, identities) for scale in args.scales}
    minutes = write_record(args.output, started, scales=results)
    print("| guidance | identity similarity | face found | lineup rank (of 40) |\n|---|---|---|---|")
    for scale, result in results.items():
        print(f"| {scale} | {result['identity']:.3f} | {result['face_found']:.0%} | {result['rank']:.1f} |")
    print(f"\n{len(identities)} identities x 2 distances per scale; {minutes:.1f} min")


if __name__ == "__main__":
    main()
