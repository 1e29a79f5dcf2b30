"""VCD's claims, measured in the miniature world with its instruments (a table for the README).

    python benchmarks/world_table.py            # about 14 minutes on 2 CPU cores

Every cell is the mean ± standard deviation over held-out identities x seeds. Each identity
is learned from five photos that share one background (as photos taken in one place do),
then filmed in another scene. Two ceilings come first: the world's own clips of the
identity, and the same clips through the model's autoencoder (the most any generation keeps).
- ID module: no identity (the prompt alone), the identity's traits in words (no learning),
  plain textual inversion (1 token, whole image loss) and VCD (4 extended tokens, masked
  loss): identity similarity, lineup rank (where the instrument ranks the identity among
  the 20 held-out ones; 1: recognised, a clip with no face found counts as 20), prompt
  fidelity (the scene classifier agrees with the prompt) and background leakage (it picks
  the photos' scene instead);
- the 3D noise prior's gamma: pixel flicker, motion (optical flow) and identity similarity;
- Face VCD on "far away" clips (small faces) and on the usual ones: identity similarity of the face region
  and lineup rank;
- Tiled VCD: identity similarity, lineup rank and prompt fidelity before and after 2x upscaling.
Writes benchmarks/results-world.json and prints the Markdown table.
"""

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from functools import cache
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from magicme import world
from magicme.config import GenerationSettings, ModelSettings, TrainingSettings
from magicme.faces import refine_faces, world_face_detector
from magicme.generation import generate
from magicme.instrument_accuracy import lineup_place
from magicme.instruments import pixels, world_instruments
from magicme.loading import load_pipeline
from magicme.metrics import dynamic_degree, flicker, similarity_to_references
from magicme.tiling import denoise_tiled, sharpen, upscale_frames
from magicme.training import train_identity
from magicme.v2v import DenoiseSettings, make_denoiser
from magicme.video_io import to_uint8
from magicme.world_model import (
    FACE_STRENGTH,
    GUIDANCE,
    PORTRAIT,
    SIZE,
    TILE,
    TILE_OVERLAP,
    TILE_STRENGTH,
    world_model_paths,
)

CLAIMS = {"id": "ID module", "gamma": "noise prior gamma", "face": "Face VCD", "tiled": "Tiled VCD"}
HERE = Path(__file__).resolve().parent
GAMMAS = (0.0, 0.05, 0.1, 0.15, 0.3)
ID_MODULES = {  # name -> (tokens, masks); None: no identity at all
    "none": None,
    "textual inversion": (1, "none"),
    "VCD (extended tokens, masked)": (4, "files"),
}


def learn(identity: int, photos: Path, tokens: int, masks: str, folder: Path, steps: int = 300) -> Path:
    """Train an identity the way the demo does; returns its file."""
    base, _ = world_model_paths()
    settings = TrainingSettings(
        photos=str(photos),
        name="hero",
        base_model=str(base),
        output_dir=str(folder),
        num_tokens=tokens,
        masks=masks,
        resolution=SIZE,
        steps=steps,
        learning_rate=5e-3,
        validation_every=0,
        checkpoint_every=1000,
        device="cpu",
    )
    train_identity(settings)
    return folder / "hero.safetensors"


def identity_scores(faces: torch.Tensor | None, references: torch.Tensor) -> list[float]:
    """Per frame with a face, the mean cosine of its identity embedding to the photos'."""
    return [] if faces is None else similarity_to_references(faces, references).tolist()


def record_identity(cells: dict, row: str, frames: torch.Tensor, identity: int, references: torch.Tensor) -> None:
    """A row's identity similarity and lineup rank for one clip."""
    faces = world_instruments().embed_faces(to_uint8(frames))
    cells[f"{row}/identity"] += identity_scores(faces, references)
    cells[f"{row}/rank"].append(lineup_place(faces, identity))


def record_id_row(
    cells: dict, row: str, frames: torch.Tensor, identity: int, references: torch.Tensor, scenes: tuple[str, str]
) -> None:
    """An ID-module row's cells for one clip: identity similarity, lineup rank, and the shares of
    frames the scene classifier puts in the prompt's scene (fidelity) and in the photos' scene (leakage)."""
    prompt_scene, photo_scene = scenes
    named = world_instruments().classify_scenes(list(to_uint8(frames)))  # one pass for both shares
    record_identity(cells, f"id/{row}", frames, identity, references)
    cells[f"id/{row}/fidelity"].append(named.count(prompt_scene) / len(named))
    cells[f"id/{row}/leakage"].append(named.count(photo_scene) / len(named))


def prompt(token: str, scene: str, distance: str = "medium") -> str:
    return f"{world.DISTANCES[distance][0]} {token} person {world.where(scene)}"


@cache
def autoencoder() -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(world_model_paths()[0] / "vae").float().eval()


@torch.no_grad()
def round_trip(frames: torch.Tensor) -> torch.Tensor:
    """(F, 3, H, W) frames in [0, 1] encoded and decoded by the model's autoencoder: the most of
    them that anything the model generates can keep."""
    vae = autoencoder()
    return ((vae.decode(vae.encode(frames * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)


def clip_settings(text: str, seed: int, gamma: float = GenerationSettings.gamma) -> GenerationSettings:
    """A clip at the world model's size and guidance."""
    return GenerationSettings(prompt=text, height=SIZE, width=SIZE, guidance_scale=GUIDANCE, gamma=gamma, seed=seed)


def measure_identity(identity: int, seeds: list[int], work: Path, cells: dict[str, list[float]]) -> None:
    """Every row's measurements for one held-out identity, appended to `cells`."""
    scenes = list(world.SCENES)
    photo_scene = scenes[identity % len(scenes)]
    scene = scenes[(identity + 3) % len(scenes)]
    photos = work / f"photos-{identity}"
    shots = world.write_identity_photos(photos, identity, scene=photo_scene)
    references = world_instruments().embed_faces(np.asarray(shot.image) for shot in shots)
    for seed in seeds:  # the ceilings: the world's own clips of the identity, in the prompt's scene
        truth = world.clip(world.character(identity), scene, world.MOTIONS[seed % len(world.MOTIONS)], seed=seed)
        frames = torch.stack([pixels(shot.image) for shot in truth])
        ceilings = {"ground truth (the world's own clip)": frames, "ground truth, autoencoded": round_trip(frames)}
        for row, shown in ceilings.items():
            record_id_row(cells, row, shown, identity, references, (scene, photo_scene))
    base, motion = world_model_paths()
    for name, module in ID_MODULES.items():
        files = [] if module is None else [str(learn(identity, photos, *module, work / f"{identity}-{module[0]}"))]
        pipe = load_pipeline(ModelSettings(base_model=str(base), motion_adapter=str(motion), identities=files))
        token = "a <hero>" if files else "a"
        prompts = {name: prompt(token, scene)}
        if module is None:  # what the model draws from the identity's traits in words, without learning
            prompts["the identity in words (no learning)"] = world.caption(world.character(identity), scene)
        for row, text in prompts.items():
            for seed in seeds:
                frames = generate(pipe, clip_settings(text, seed))
                record_id_row(cells, row, frames, identity, references, (scene, photo_scene))
        if module is None or module[1] != "files":
            continue
        for seed in seeds:  # the VCD identity: noise prior, Face VCD and Tiled VCD
            for gamma in GAMMAS:
                video = clip_settings(prompt(token, scene), seed, gamma=gamma)
                frames = generate(pipe, video)
                cells[f"gamma/{gamma}/identity"] += identity_scores(
                    world_instruments().embed_faces(to_uint8(frames)), references
                )
                cells[f"gamma/{gamma}/flicker"].append(flicker(frames))
                cells[f"gamma/{gamma}/motion"].append(dynamic_degree(frames))
            face_denoiser = make_denoiser(pipe, DenoiseSettings(PORTRAIT, FACE_STRENGTH, 25, guidance_scale=GUIDANCE))
            clips = {}
            for distance in ("far", "medium"):  # the far away faces Face VCD is for, and the usual ones
                frames = clips[distance] = generate(pipe, clip_settings(prompt(token, scene, distance), seed))
                refined = refine_faces(frames, face_denoiser, world_face_detector, guide_size=SIZE)
                record_identity(cells, f"face/{distance}, off", frames, identity, references)
                record_identity(cells, f"face/{distance}, on", refined, identity, references)
            frames = clips["medium"]
            tile_denoiser = make_denoiser(pipe, DenoiseSettings(PORTRAIT, TILE_STRENGTH, 25, guidance_scale=GUIDANCE))
            upscaled = upscale_frames(frames, 2.0)
            tiled = sharpen(denoise_tiled(upscaled, tile_denoiser, TILE, TILE_OVERLAP), 0.2)
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
    parser.add_argument("--identities", type=int, default=4, help="held-out identities to learn")
    parser.add_argument("--seeds", type=int, default=2, help="videos per identity and setting")
    parser.add_argument("--output", type=Path, default=HERE / "results-world.json")
    args = parser.parse_args()
    started, cells = time.perf_counter(), defaultdict(list)
    with tempfile.TemporaryDirectory() as work:
        for identity in range(world.HELD_OUT_START, world.HELD_OUT_START + args.identities):
            measure_identity(identity, list(range(args.seeds)), Path(work), cells)
    minutes = (time.perf_counter() - started) / 60
    record = {"command": "python benchmarks/world_table.py", "minutes": round(minutes, 1), "cells": cells}
    args.output.write_text(json.dumps(record, indent=1) + "\n")
    print(table(cells))
    print(f"\n{args.identities} identities x {args.seeds} seeds; {minutes:.1f} min")


if __name__ == "__main__":
    main()
