"""Do Face VCD and Tiled VCD raise identity on identities they were never tuned on?

    python benchmarks/world_refinement.py                      # report split, 2 seeds: about 70 min
    python benchmarks/world_refinement.py --split choose       # where the recipe's settings are chosen
    python benchmarks/world_refinement.py --resume             # measure only what the results file lacks

Each identity is learned the demo's way (five varied photos, the recipe's ID module), then
filmed in a scene none of its photos shows, close up and at medium range, once per seed.
Per clip: T2V VCD; Face VCD with the recipe's settings and with every face refined (the
recipe leaves faces that would not be enlarged); and, on the close-up clip after Face VCD,
the 2x upscale by Lanczos alone and by Tiled VCD at the recipe's strength (or 0.1 when the
recipe turns it off). Per stage: identity similarity and lineup rank (mean ± spread over
identities x seeds), and the share of identities the stage helps, hurts or leaves neutral
against its baseline (Face VCD against T2V, Tiled VCD against Lanczos): neutral when the
mean change is within twice its standard error over seeds. Writes
benchmarks/results-world-refinement-SPLIT.json and prints the Markdown tables.
"""

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from record import add_steps_option, recipe_with_steps, write_record
from world_table import identity_scores, learn

from magicme.io.video import to_uint8
from magicme.models.loading import load_pipeline
from magicme.registry import face_detector
from magicme.settings import ModelSettings
from magicme.t2v.generate import generate
from magicme.v2v.denoiser import make_denoiser, noise_field_for
from magicme.v2v.faces import refine_faces
from magicme.v2v.tiles import tiled_vcd, upscale_and_sharpen
from magicme.world import scenes
from magicme.world.accuracy import lineup_place
from magicme.world.demo import new_scene
from magicme.world.instruments import world_instruments
from magicme.world.model import world_model_paths
from magicme.world.recipe import RECIPE, WorldRecipe, choosing_split, reporting_split

HERE = Path(__file__).resolve().parent
BASELINES = {"Face VCD": "T2V VCD", "Face VCD, every face": "T2V VCD", "Tiled VCD 2x": "Lanczos 2x"}


def score(frames: torch.Tensor, identity: int, references: torch.Tensor) -> dict[str, float]:
    """A clip's identity similarity (mean over frames with a face; 0 with none) and lineup rank."""
    faces = world_instruments().embed_faces(to_uint8(frames))
    similarities = identity_scores(faces, references)
    return {"identity": statistics.mean(similarities) if similarities else 0.0, "rank": lineup_place(faces, identity)}


def measure_identity(
    recipe: WorldRecipe, identity: int, seeds: list[int], work: Path, training_steps: int
) -> dict[str, list[dict[str, float]]]:
    """Every stage's score for each (framing, seed) clip of one identity."""
    photos = work / f"photos-{identity}"
    shots = scenes.write_identity_photos(photos, identity)
    references = world_instruments().embed_faces(np.asarray(shot.image) for shot in shots)
    scene = new_scene([shot.scene for shot in shots])
    base, motion = world_model_paths()
    identity_file = learn(identity, photos, recipe.num_tokens, recipe.masks, work / str(identity), training_steps)
    pipe = load_pipeline(ModelSettings(str(base), str(motion), identities=[str(identity_file)]))
    detector, rows = face_detector("world"), defaultdict(list)
    for seed in seeds:
        after_face = {}
        for framing in ("close", "medium"):
            frames = generate(pipe, recipe.generation(recipe.prompt(scene, framing), seed))
            face = recipe.face(seed)
            variants = {"Face VCD": face.min_enlargement, "Face VCD, every face": 1.0}
            refined = {}
            for row, min_enlargement in variants.items():
                denoise, noise = make_denoiser(pipe, face), noise_field_for(pipe, face).draw
                refined[row] = refine_faces(
                    frames, denoise, noise, detector, guide_size=face.guide_size, min_enlargement=min_enlargement
                )
            for row, shown in {"T2V VCD": frames, **refined}.items():
                rows[f"{framing} | {row}"].append(score(shown, identity, references))
            after_face[framing] = refined["Face VCD"]
        chosen = after_face["close"]  # the close-up clip after the recipe's Face VCD, as in the demo
        upscale = recipe.upscale(seed, strength=recipe.tile_strength or 0.1)
        lanczos = upscale_and_sharpen(chosen, upscale)
        tiled = tiled_vcd(chosen, make_denoiser(pipe, upscale), noise_field_for(pipe, upscale).draw, upscale)
        rows["close | Lanczos 2x"].append(score(lanczos, identity, references))
        rows["close | Tiled VCD 2x"].append(score(tiled, identity, references))
    return dict(rows)


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def verdict(changes: list[float]) -> str:
    """helps / hurts / neutral: the mean change over seeds against twice its standard error."""
    mean = statistics.mean(changes)
    error = statistics.stdev(changes) / len(changes) ** 0.5 if len(changes) > 1 else 0.0
    return "neutral" if abs(mean) <= 2 * error or mean == 0 else ("helps" if mean > 0 else "hurts")


def tables(results: dict[int, dict[str, list[dict[str, float]]]]) -> str:
    rows = list(next(iter(results.values())))
    lines = ["| clip | stage | identity similarity | lineup rank | helps / hurts / neutral |", "|---|---|---|---|---|"]
    for row in rows:
        framing, stage = row.split(" | ")
        identity = [s["identity"] for scores in results.values() for s in scores[row]]
        rank = [s["rank"] for scores in results.values() for s in scores[row]]
        shares = ""
        if stage in BASELINES:
            base = f"{framing} | {BASELINES[stage]}"
            verdicts = [
                verdict([a["identity"] - b["identity"] for a, b in zip(scores[row], scores[base], strict=True)])
                for scores in results.values()
            ]
            shares = " / ".join(f"{verdicts.count(v)}" for v in ("helps", "hurts", "neutral"))
        lines.append(f"| {framing} | {stage} | {spread(identity)} | {spread(rank)} | {shares} |")
    return "\n".join(lines)


def earlier_results(output: Path, split: str, recipe: dict) -> tuple[dict[int, dict], float]:
    """What an earlier run of the same split and recipe already measured, and its minutes."""
    if not output.exists():
        return {}, 0.0
    record = json.loads(output.read_text())
    if record.get("split") != split or record.get("recipe") != recipe:
        raise SystemExit(f"{output} was measured with another split or recipe; move it aside to start afresh")
    return {int(identity): scores for identity, scores in record["identities"].items()}, record["minutes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("report", "choose"), default="report")
    parser.add_argument("--identities", type=int, help="the split's first N identities (default: all of it)")
    parser.add_argument("--seeds", type=int, default=2, help="clips per identity and framing")
    parser.add_argument("--training-steps", type=int, default=RECIPE.training_steps, help="ID module steps")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--resume", action="store_true", help="keep the identities the output already holds")
    add_steps_option(parser)
    args = parser.parse_args()
    recipe = recipe_with_steps(args)  # every clip samples with it: `--inference-steps` changes them all
    split = {"report": (reporting_split, scenes.REPORT_SPLIT), "choose": (choosing_split, scenes.CHOOSE_SPLIT)}
    pick, whole = split[args.split]
    identities = pick(args.identities or len(whole))
    output = args.output or HERE / f"results-world-refinement-{args.split}.json"
    recorded = json.loads(json.dumps(recipe.one_identity_record()))  # as the results file holds it
    results, earlier_minutes = earlier_results(output, args.split, recorded) if args.resume else ({}, 0.0)
    started = time.perf_counter() - 60 * earlier_minutes
    with tempfile.TemporaryDirectory() as work:
        for identity in identities:
            if identity in results:
                continue
            results[identity] = measure_identity(
                recipe, identity, list(range(args.seeds)), Path(work), args.training_steps
            )
            minutes = write_record(output, started, split=args.split, recipe=recorded, identities=results)
            print(f"identity {identity} done ({minutes:.1f} min)", flush=True)
    results = {identity: results[identity] for identity in identities}
    minutes = write_record(output, started, split=args.split, recipe=recorded, identities=results)
    print(tables(results))
    print(f"\n{len(identities)} identities of the {args.split} split x {args.seeds} seeds; {minutes:.1f} min")


if __name__ == "__main__":
    main()
