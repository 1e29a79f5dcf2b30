"""The speed presets' samplers against the 25-step recipe, on the world model (the plumbing, measured).

    python benchmarks/world_presets.py            # about 6 minutes on 2 CPU cores

The world has no distilled motion module: `lightning-4`, `lightning-8` and `lcm` run here
with the world's own motion module and only their sampler, steps and guidance
(`with_preset` on the generation settings), so their identity scores show what few steps
cost an undistilled model, not what the distilled modules give on SD-1.5. Each identity of
the report split is learned the demo's way (five photos, 300 steps) and filmed close up in
a scene none of its photos shows, once per seed. Per sampler: seconds per 16-frame clip,
its ratio to stock diffusers' `AnimateDiffPipeline` call at 25 steps and guidance 7.5 in the
same run, identity similarity, the share of frames with a face found, and the lineup rank
(among the 40 held-out identities; a clip with no face found counts as 40).
Writes benchmarks/results-world-presets.json and prints the Markdown table.
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from record import add_steps_option, recipe_with_steps, write_record

from magicme.eval.metrics import similarity_to_references
from magicme.identity.train import train_identity
from magicme.io.video import to_uint8
from magicme.models.loading import load_pipeline
from magicme.models.presets import with_preset
from magicme.settings import ModelSettings
from magicme.t2v.generate import generate
from magicme.world import scenes
from magicme.world.accuracy import lineup_place, photo_embeddings
from magicme.world.instruments import world_instruments
from magicme.world.model import world_model_paths
from magicme.world.recipe import RECIPE, WorldRecipe, reporting_split

HERE = Path(__file__).resolve().parent
SAMPLERS = ("recipe (DDIM, 25 steps, guidance 7.5)", "lightning-4", "lightning-8", "lcm")
STOCK = "stock diffusers (DDIM, 25 steps, guidance 7.5)"


def learn(recipe: WorldRecipe, identity: int, work: Path, steps: int) -> tuple[Path, str]:
    """The identity learned the demo's way; returns its file and a scene none of its photos shows."""
    photos = work / f"photos-{identity}"
    shots = scenes.write_identity_photos(photos, identity)
    train_identity(recipe.training(photos, steps=steps, output_dir=str(work / str(identity)), checkpoint_every=1000))
    scene = next(scene for scene in scenes.SCENES if scene not in {shot.scene for shot in shots})
    return work / str(identity) / f"{recipe.name}.safetensors", scene


def timed(render: Callable, *args: object, **kwargs: object) -> tuple[Any, float]:
    started = time.perf_counter()
    result = render(*args, **kwargs)
    return result, time.perf_counter() - started


def measure_identity(
    recipe: WorldRecipe, identity: int, seeds: int, work: Path, steps: int, cells: dict[str, dict[str, list]]
) -> None:
    identity_file, scene = learn(recipe, identity, work, steps)
    base, motion = world_model_paths()
    pipe = load_pipeline(ModelSettings(str(base), str(motion), identities=[str(identity_file)], device="cpu"))
    stock_scheduler, instruments = pipe.scheduler, world_instruments()  # the scheduler the model ships with
    references = photo_embeddings(instruments, identity)
    for seed in range(seeds):
        video = recipe.generation(recipe.prompt(scene), seed)
        stock = {"prompt": video.prompt, "num_frames": video.num_frames, "height": video.height}
        stock |= {"width": video.width, "num_inference_steps": video.num_inference_steps}
        stock |= {"guidance_scale": video.guidance_scale, "output_type": "pt"}
        pipe.scheduler = stock_scheduler
        _, seconds = timed(pipe, **stock)
        cells[STOCK]["seconds"].append(seconds)
        for sampler in SAMPLERS:
            settings = video if sampler == SAMPLERS[0] else with_preset(video, sampler)
            frames, seconds = timed(generate, pipe, settings)
            faces = instruments.embed_faces(to_uint8(frames))
            cells[sampler]["seconds"].append(seconds)
            cells[sampler]["found"].append(0.0 if faces is None else len(faces) / len(frames))
            cells[sampler]["identity"] += [] if faces is None else similarity_to_references(faces, references).tolist()
            cells[sampler]["rank"].append(lineup_place(faces, identity))


def table(cells: dict[str, dict[str, list]]) -> str:
    stock = statistics.mean(cells[STOCK]["seconds"])
    lines = [
        "| sampler | seconds per clip | ratio to stock | identity similarity | face found | lineup rank |",
        "|---|---|---|---|---|---|",
        f"| {STOCK} | {stock:.2f} | 1.00 |  |  |  |",
    ]
    for sampler in SAMPLERS:
        cell = cells[sampler]
        seconds = statistics.mean(cell["seconds"])
        identity = statistics.mean(cell["identity"]) if cell["identity"] else 0.0
        lines.append(
            f"| {sampler} | {seconds:.2f} | {seconds / stock:.2f} | {identity:.3f} | "
            f"{statistics.mean(cell['found']):.0%} | {statistics.mean(cell['rank']):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=3, help="identities of the report split to learn")
    parser.add_argument("--seeds", type=int, default=2, help="clips per identity and sampler")
    parser.add_argument("--training-steps", type=int, default=RECIPE.training_steps)
    parser.add_argument("--output", type=Path, default=HERE / "results-world-presets.json")
    add_steps_option(parser)
    args = parser.parse_args()
    recipe = recipe_with_steps(args)  # every clip samples with it: `--inference-steps` changes them all
    started = time.perf_counter()
    cells = {name: {"seconds": [], "found": [], "identity": [], "rank": []} for name in (STOCK, *SAMPLERS)}
    with tempfile.TemporaryDirectory() as work:
        for identity in reporting_split(args.identities):
            measure_identity(recipe, identity, args.seeds, Path(work), args.training_steps, cells)
    minutes = write_record(args.output, started, samplers=cells)
    print(table(cells))
    print(f"\n{args.identities} identities x {args.seeds} seeds; {minutes:.1f} min")


if __name__ == "__main__":
    main()
