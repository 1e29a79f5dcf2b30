"""Single identities on a world model, close up and at medium range: what a model tuned on groups must keep.

    python benchmarks/world_singles.py --model-dir DIR   # a tuned model, on the choose split (about 8 min)
    python benchmarks/world_singles.py                   # the shipped model, the same way

`world_table.py`'s VCD row on another model and at both framings: each identity is learned the
recipe's way from five photos that share one scene, then filmed alone in another scene
("a close up photo of a <hero> person on the snow"), 2 seeds. Per framing, the lineup rank
(where the instruments rank the identity among the 40 held-out ones; no face found: 40) and the
prompt fidelity (the share of frames the scene classifier puts in the prompt's scene).
Choose a group tuning on the choose split (the default); report on the report split.
Writes benchmarks/results-world-singles-SPLIT.json (or --output) and prints the Markdown table.
"""

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from record import add_steps_option, recipe_with_steps, write_record
from world_table import learn

from magicme.io.video import to_uint8
from magicme.models.loading import load_pipeline
from magicme.settings import ModelSettings
from magicme.t2v.generate import generate
from magicme.world import scenes
from magicme.world.accuracy import lineup_place
from magicme.world.instruments import world_instruments
from magicme.world.model import world_model_paths
from magicme.world.recipe import RECIPE, WorldRecipe, choosing_split, reporting_split

HERE = Path(__file__).resolve().parent
SPLITS = {"choose": choosing_split, "report": reporting_split}
FRAMINGS = ("close", "medium")


def measure_identity(
    recipe: WorldRecipe, identity: int, seeds: list[int], work: Path, model_dir: Path | None
) -> list[dict]:
    """One identity learned on the model and filmed at each framing and seed: per clip, its figures."""
    base, motion = world_model_paths(model_dir)
    names = list(scenes.SCENES)
    photo_scene, scene = names[identity % len(names)], names[(identity + 3) % len(names)]
    photos = work / f"photos-{identity}"
    scenes.write_identity_photos(photos, identity, scene=photo_scene)
    folder, steps = work / str(identity), recipe.training_steps
    file = learn(identity, photos, recipe.num_tokens, recipe.masks, folder, steps, base_model=str(base))
    pipe = load_pipeline(ModelSettings(base_model=str(base), motion_adapter=str(motion), identities=[str(file)]))
    clips = []
    for framing in FRAMINGS:
        for seed in seeds:
            frames = list(to_uint8(generate(pipe, recipe.generation(recipe.prompt(scene, framing), seed))))
            rank = lineup_place(world_instruments().embed_faces(frames), identity)
            fidelity = world_instruments().scene_share(frames, scene)
            clips.append({"identity": identity, "framing": framing, "seed": seed, "rank": rank, "fidelity": fidelity})
    return clips


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}"


def table(clips: list[dict]) -> str:
    """Per framing: mean ± sd over identities x seeds, and every clip's rank in order."""
    lines = ["| framing | lineup rank (1 best, of 40) | prompt fidelity | ranks |", "|---|---|---|---|"]
    for framing in FRAMINGS:
        mine = [clip for clip in clips if clip["framing"] == framing]
        ranks, fidelity = [clip["rank"] for clip in mine], [clip["fidelity"] for clip in mine]
        lines.append(f"| {framing} | {spread(ranks)} | {spread(fidelity)} | {', '.join(map(str, ranks))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=SPLITS, default="choose")
    parser.add_argument("--identities", type=int, default=6, help="identities of the split")
    parser.add_argument("--seeds", type=int, default=2, help="clips per identity and framing")
    parser.add_argument(
        "--model-dir", type=Path, help="a world model folder (base/, motion_adapter/); default: shipped"
    )
    parser.add_argument("--training-steps", type=int, default=RECIPE.training_steps)
    parser.add_argument("--output", type=Path)
    add_steps_option(parser)
    args = parser.parse_args()
    recipe = dataclasses.replace(recipe_with_steps(args), training_steps=args.training_steps)
    started, clips = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as work:
        for identity in SPLITS[args.split](args.identities):
            clips += measure_identity(recipe, identity, list(range(args.seeds)), Path(work), args.model_dir)
    output = args.output or HERE / f"results-world-singles-{args.split}.json"
    model = str(args.model_dir or "the shipped world model")
    minutes = write_record(output, started, split=args.split, model=model, clips=clips)
    print(f"{table(clips)}\n\n({minutes:.1f} min; {output})")


if __name__ == "__main__":
    main()
