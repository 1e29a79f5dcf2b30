"""VCD's claims, measured in the miniature world with its instruments (a table for the README).

    python benchmarks/world_table.py            # about 14 minutes on 2 CPU cores

Every cell is the mean ± standard deviation over held-out identities x seeds. Each identity
is learned from five photos that share one background (as photos taken in one place do),
then filmed in another scene. Two ceilings come first: the world's own clips of the
identity, and the same clips through the model's autoencoder (the most any generation keeps).
- ID module: no identity (the prompt alone), the identity's traits in words (no learning),
  plain textual inversion (1 token, whole image loss) and VCD (4 extended tokens, masked
  loss): identity similarity, lineup rank (where the instrument ranks the identity among
  the 20 held-out ones; 1: recognised, a clip with no face found counts as 40), prompt
  fidelity (the scene classifier agrees with the prompt) and background leakage (it picks
  the photos' scene instead);
- the 3D noise prior's gamma: pixel flicker, motion (optical flow) and identity similarity;
- Face VCD on "far away" clips (small faces) and on the usual ones: identity similarity of the face region
  and lineup rank;
- Tiled VCD: identity similarity, lineup rank and prompt fidelity before and after 2x upscaling.
Writes benchmarks/results-world.json and prints the Markdown table.
"""

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from functools import cache
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from record import write_record

from magicme.eval.metrics import dynamic_degree, flicker, similarity_to_references
from magicme.identity.train import train_identity
from magicme.io.video import from_uint8, to_uint8
from magicme.models.loading import load_pipeline
from magicme.registry import face_detector
from magicme.settings import ModelSettings
from magicme.t2v.generate import generate
from magicme.v2v.denoiser import make_denoiser, noise_field_for
from magicme.v2v.faces import refine_faces
from magicme.v2v.tiles import tiled_vcd, upscale_frames
from magicme.world import scenes
from magicme.world.accuracy import lineup_place
from magicme.world.instruments import world_instruments
from magicme.world.model import world_model_paths
from magicme.world.recipe import RECIPE, reporting_split

CLAIMS = {"id": "ID module", "gamma": "noise prior gamma", "face": "Face VCD", "tiled": "Tiled VCD"}
HERE = Path(__file__).resolve().parent
GAMMAS = (0.0, 0.05, 0.1, 0.15, 0.3)
ID_MODULES = {  # name -> (tokens, masks); None: no identity at all
    "none": None,
    "textual inversion": (1, "none"),
    "VCD (extended tokens, masked)": (4, "files"),
}


def learn(
    identity: int, photos: Path, tokens: int, masks: str, folder: Path, steps: int | None = None, **changes: object
) -> Path:
    """Train an identity the recipe's way (with `tokens` and `masks`, and any other `changes` to its
    settings, such as another `base_model`); returns its file."""
    changes |= {"output_dir": str(folder), "num_tokens": tokens, "masks": masks, "checkpoint_every": 1000}
    train_identity(RECIPE.training(photos, steps=steps or RECIPE.training_steps, **changes))
    return folder / f"{RECIPE.name}.safetensors"


def identity_scores(faces: torch.Tensor | None, references: torch.Tensor) -> list[float]:
    """Per frame with a face, the mean cosine of its identity embedding to the photos'."""
    return [] if faces is None else similarity_to_references(faces, references).tolist()


def record_identity(cells: dict, row: str, frames: torch.Tensor, identity: int, references: torch.Tensor) -> None:
    """A row's identity similarity and lineup rank for one clip."""
    faces = world_instruments().embed_faces(to_uint8(frames))
    cells[f"{row}/identity"] += identity_scores(faces, references)
    cells[f"{row}/rank"].append(lineup_place(faces, identity))


def record_id_row(
    cells: dict, row: str, frames: torch.Tensor, identity: int, references: torch.Tensor, scene_pair: tuple[str, str]
) -> None:
    """An ID-module row's cells for one clip: identity similarity, lineup rank, and the shares of
    frames the scene classifier puts in the prompt's scene (fidelity) and in the photos' scene (leakage)."""
    prompt_scene, photo_scene = scene_pair
    named = world_instruments().classify_scenes(list(to_uint8(frames)))  # one pass for both shares
    record_identity(cells, f"id/{row}", frames, identity, references)
    cells[f"id/{row}/fidelity"].append(named.count(prompt_scene) / len(named))
    cells[f"id/{row}/leakage"].append(named.count(photo_scene) / len(named))


@cache
def autoencoder() -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(world_model_paths()[0] / "vae").float().eval()


@torch.no_grad()
def round_trip(frames: torch.Tensor) -> torch.Tensor:
    """(F, 3, H, W) frames in [0, 1] encoded and decoded by the model's autoencoder: the most of
    them that anything the model generates can keep."""
    vae = autoencoder()
    return ((vae.decode(vae.encode(frames * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)


def measure_identity(identity: int, seeds: list[int], work: Path, cells: dict[str, list[float]]) -> None:
    """Every row's measurements for one held-out identity, appended to `cells`."""
    names = list(scenes.SCENES)
    photo_scene = names[identity % len(names)]
    scene = names[(identity + 3) % len(names)]
    photos = work / f"photos-{identity}"
    shots = scenes.write_identity_photos(photos, identity, scene=photo_scene)
    references = world_instruments().embed_faces(np.asarray(shot.image) for shot in shots)
    for seed in seeds:  # the ceilings: the world's own clips of the identity, in the prompt's scene
        truth = scenes.clip(scenes.character(identity), scene, scenes.MOTIONS[seed % len(scenes.MOTIONS)], seed=seed)
        frames = from_uint8(np.stack([np.asarray(shot.image) for shot in truth]))
        ceilings = {"ground truth (the world's own clip)": frames, "ground truth, autoencoded": round_trip(frames)}
        for row, shown in ceilings.items():
            record_id_row(cells, row, shown, identity, references, (scene, photo_scene))
    base, motion = world_model_paths()
    for name, module in ID_MODULES.items():
        files = [] if module is None else [str(learn(identity, photos, *module, work / f"{identity}-{module[0]}"))]
        pipe = load_pipeline(ModelSettings(base_model=str(base), motion_adapter=str(motion), identities=files))
        token = None if files else "a"
        prompts = {name: RECIPE.prompt(scene, "medium", token)}
        if module is None:  # what the model draws from the identity's traits in words, without learning
            prompts["the identity in words (no learning)"] = scenes.caption(scenes.character(identity), scene)
        for row, text in prompts.items():
            for seed in seeds:
                frames = generate(pipe, RECIPE.generation(text, seed))
                record_id_row(cells, row, frames, identity, references, (scene, photo_scene))
        if module is None or module[1] != "files":
            continue
        for seed in seeds:  # the VCD identity: noise prior, Face VCD and Tiled VCD
            for gamma in GAMMAS:
                frames = generate(pipe, RECIPE.generation(RECIPE.prompt(scene, "medium"), seed, gamma=gamma))
                cells[f"gamma/{gamma}/identity"] += identity_scores(
                    world_instruments().embed_faces(to_uint8(frames)), references
                )
                cells[f"gamma/{gamma}/flicker"].append(flicker(frames))
                cells[f"gamma/{gamma}/motion"].append(dynamic_degree(frames))
            face = RECIPE.face(seed)
            face_denoiser, detector = make_denoiser(pipe, face), face_detector(face.detector)
            clips = {}
            for distance in ("far", "medium"):  # the far away faces Face VCD is for, and the usual ones
                frames = clips[distance] = generate(pipe, RECIPE.generation(RECIPE.prompt(scene, distance), seed))
                noise = noise_field_for(pipe, face).draw
                refined = refine_faces(
                    frames,
                    face_denoiser,
                    noise,
                    detector,
                    guide_size=face.guide_size,
                    min_enlargement=face.min_enlargement,
                )
                record_identity(cells, f"face/{distance}, off", frames, identity, references)
                record_identity(cells, f"face/{distance}, on", refined, identity, references)
            frames, upscale = clips["medium"], RECIPE.upscale(seed)
            tiled = tiled_vcd(frames, make_denoiser(pipe, upscale), noise_field_for(pipe, upscale).draw, upscale)
            upscaled = upscale_frames(frames, upscale.factor)
            for row, shown in {"before (64 px)": frames, "Lanczos 2x only": upscaled, "Tiled VCD 2x": tiled}.items():
                record_identity(cells, f"tiled/{row}", shown, identity, references)
                cells[f"tiled/{row}/fidelity"].append(world_instruments().scene_share(list(to_uint8(shown)), scene))


def cell(values: list[float]) -> str:
    if not values:
        return ""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def table(cells: dict[str, list[float]]) -> str:
    lines = [
        "| claim | setting | identity similarity | lineup rank | prompt fidelity | background leakage | flicker "
        "| motion px/frame |"
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    rows = dict.fromkeys(key.rsplit("/", 1)[0] for key in cells)
    for row in rows:
        group, setting = row.split("/", 1)
        values = [cell(cells.get(f"{row}/{metric}", [])) for metric in ("identity", "rank", "fidelity", "leakage")]
        values += [cell(cells.get(f"{row}/{metric}", [])) for metric in ("flicker", "motion")]
        lines.append(f"| {CLAIMS[group]} | {setting} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=4, help="identities of the report split to learn")
    parser.add_argument("--seeds", type=int, default=2, help="videos per identity and setting")
    parser.add_argument("--output", type=Path, default=HERE / "results-world.json")
    args = parser.parse_args()
    started, cells = time.perf_counter(), defaultdict(list)
    with tempfile.TemporaryDirectory() as work:
        for identity in reporting_split(args.identities):
            measure_identity(identity, list(range(args.seeds)), Path(work), cells)
    minutes = write_record(args.output, started, cells=cells)
    print(table(cells))
    print(f"\n{args.identities} identities x {args.seeds} seeds; {minutes:.1f} min")


if __name__ == "__main__":
    main()
