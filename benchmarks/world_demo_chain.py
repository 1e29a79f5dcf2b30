"""Which settings the demo's chain uses, measured over held-out identities learned the demo's way.

    python benchmarks/world_demo_chain.py            # about 16 minutes on 2 CPU cores

Each identity is learned from its five photos (varied scenes, 300 steps, VCD's masked
extended tokens), then filmed in a scene none of its photos shows, as `make demo` does.
Compared: the framing of the T2V prompt (medium or close up); Face VCD's strength; and,
after Face VCD at the recipe's strength on the close-up clip, Lanczos alone against Tiled VCD at two
strengths, with a prompt that names the person only or also the scene. Per setting: the
mean lineup rank (where the instrument ranks the identity among the 40 held-out ones; 1:
recognised, a clip with no face found counts as 40), how many identities rank 1, the share
of frames with a face found, and the share the scene classifier puts in the prompt's scene.
Writes benchmarks/results-world-demo-chain.json and prints the Markdown table.
"""

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from record import add_steps_option, recipe_with_steps, write_record
from world_table import learn

from magicme.io.video import to_uint8
from magicme.models.loading import load_pipeline
from magicme.registry import face_detector
from magicme.settings import ModelSettings
from magicme.t2v.generate import generate
from magicme.v2v.denoiser import make_denoiser, noise_field_for
from magicme.v2v.faces import refine_faces
from magicme.v2v.tiles import tiled_vcd, upscale_frames
from magicme.world import scenes
from magicme.world.accuracy import lineup_place
from magicme.world.demo import new_scene
from magicme.world.instruments import world_instruments
from magicme.world.model import world_model_paths
from magicme.world.recipe import RECIPE, WorldRecipe, choosing_split

HERE = Path(__file__).resolve().parent
FACE_STRENGTHS = (0.4, 0.6)
TILE_STRENGTHS = (0.1, 0.2)


def measurement(frames: torch.Tensor, identity: int, scene: str) -> dict[str, float]:
    """One clip's lineup rank, face-found share and scene agreement."""
    pixels, instruments = list(to_uint8(frames)), world_instruments()
    faces = instruments.embed_faces(pixels)
    return {
        "rank": lineup_place(faces, identity),
        "face_found": 0.0 if faces is None else len(faces) / len(pixels),
        "scene": instruments.scene_share(pixels, scene),
    }


def measure_identity(
    recipe: WorldRecipe, identity: int, work: Path, training_steps: int
) -> dict[str, dict[str, float]]:
    """Every setting's measurement for one held-out identity, learned and filmed the demo's way."""
    photos = work / f"photos-{identity}"
    scene = new_scene([shot.scene for shot in scenes.write_identity_photos(photos, identity)])
    base, motion = world_model_paths()
    identity_file = learn(identity, photos, recipe.num_tokens, recipe.masks, work / str(identity), training_steps)
    pipe = load_pipeline(
        ModelSettings(base_model=str(base), motion_adapter=str(motion), identities=[str(identity_file)])
    )
    rows, clips = {}, {}
    for distance in ("medium", "close"):
        frames = generate(pipe, recipe.generation(recipe.prompt(scene, distance)))
        rows[f"T2V framing | {distance}"] = measurement(frames, identity, scene)
        for strength in FACE_STRENGTHS:
            face = recipe.face(strength=strength)
            detector, noise = face_detector(face.detector), noise_field_for(pipe, face).draw
            refined = refine_faces(frames, make_denoiser(pipe, face), noise, detector, guide_size=face.guide_size)
            clips[distance, strength] = refined
            rows[f"Face VCD strength ({distance}) | {strength}"] = measurement(refined, identity, scene)
    chosen = clips["close", recipe.face_strength]
    rows["2x upscale (close, after Face VCD) | Lanczos only"] = measurement(
        upscale_frames(chosen, 2.0), identity, scene
    )
    for strength in TILE_STRENGTHS:
        for named, text in {
            "person": recipe.portrait,
            "person and scene": f"{recipe.portrait} {scenes.where(scene)}",
        }.items():
            upscale = recipe.upscale(prompt=text, strength=strength)
            tiled = tiled_vcd(chosen, make_denoiser(pipe, upscale), noise_field_for(pipe, upscale).draw, upscale)
            row = f"2x upscale (close, after Face VCD) | Tiled VCD {strength}, prompt names the {named}"
            rows[row] = measurement(tiled, identity, scene)
    return rows


def table(results: dict[int, dict[str, dict[str, float]]]) -> str:
    by_row = defaultdict(list)
    for rows in results.values():
        for row, values in rows.items():
            by_row[row].append(values)
    lines = [
        "| stage | setting | mean lineup rank | ranked 1st | face found | scene agreement |",
        "|---|---|---|---|---|---|",
    ]
    for row, values in by_row.items():
        ranks = [value["rank"] for value in values]
        firsts = f"{sum(rank == 1 for rank in ranks)} of {len(ranks)}"
        found, scene = (statistics.mean(value[key] for value in values) for key in ("face_found", "scene"))
        lines.append(f"| {row} | {statistics.mean(ranks):.2f} | {firsts} | {found:.0%} | {scene:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=8, help="held-out identities to learn")
    parser.add_argument("--training-steps", type=int, default=RECIPE.training_steps, help="ID module steps")
    parser.add_argument("--output", type=Path, default=HERE / "results-world-demo-chain.json")
    add_steps_option(parser)
    args = parser.parse_args()
    recipe = recipe_with_steps(args)  # every clip samples with it: `--inference-steps` changes them all
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        identities = choosing_split(args.identities)
        results = {
            identity: measure_identity(recipe, identity, Path(work), args.training_steps) for identity in identities
        }
    minutes = write_record(args.output, started, identities=results)
    print(table(results))
    print(f"\n{args.identities} identities, one clip each per setting; {minutes:.1f} min")


if __name__ == "__main__":
    main()
