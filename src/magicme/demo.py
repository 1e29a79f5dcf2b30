"""The built-in demo: the whole VCD chain on the miniature world's trained model, offline, on a CPU.

It learns a held-out identity (one the model never saw) from five "photos" with their
ground-truth masks, renders it with the 3D noise prior in a scene that none of the photos
shows, refines its face (Face VCD, with the world's face locator), upscales 2x (Tiled
VCD), and scores each stage with the world's instruments. It goes through `magicme run`,
so a second run reuses what is done.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from magicme import world
from magicme.chain import run_chain
from magicme.config import EvalSettings
from magicme.evaluation import Entry, Evaluator, format_table
from magicme.files import atomic_path, write_json
from magicme.instrument_accuracy import HELD_OUT, lineup_rank
from magicme.instruments import world_instruments
from magicme.video_io import read_video, to_uint8
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

STAGES = {"generate": "T2V VCD", "refine_face": "+ Face VCD", "upscale": "+ Tiled VCD (2x)"}


@dataclass
class DemoSettings:
    # Held out (never in the model's training), and photographed the way a user should: four of
    # its five photos show the face close or at medium range (README: how the demo was chosen).
    identity: int = world.HELD_OUT_START + 3
    training_steps: int = 300
    inference_steps: int = 25
    seed: int = 0
    model_dir: str | None = None  # a world model folder (base/, motion_adapter/); default: the shipped one


def new_scene(photo_scenes: set[str]) -> str:
    """The first scene that none of the identity's photos shows."""
    return next(scene for scene in world.SCENES if scene not in photo_scenes)


def demo_config(output_dir: Path, photos: Path, scene: str, settings: DemoSettings) -> dict[str, Any]:
    """The `magicme run` config of the demo: train, generate, refine the face, upscale."""
    base, motion = world_model_paths(settings.model_dir)
    prompt = f"{PORTRAIT} {world.where(scene)}"  # close up: learned identities are recognised best there (README)
    sampling = {"num_inference_steps": settings.inference_steps, "guidance_scale": GUIDANCE, "seed": settings.seed}
    return {
        "output_dir": str(output_dir),
        "model": {"base_model": str(base), "motion_adapter": str(motion), "device": "cpu"},
        "train": {
            "photos": str(photos),
            "name": "hero",
            "base_model": str(base),
            "masks": "files",
            "resolution": SIZE,
            "steps": settings.training_steps,
            "learning_rate": 5e-3,
            "validation_every": 0,
            "checkpoint_every": 100,
            "device": "cpu",
            "seed": settings.seed,
        },
        "generate": {
            "prompt": prompt,
            "height": SIZE,
            "width": SIZE,
            **sampling,
        },
        "refine_face": {
            "prompt": PORTRAIT,
            "detector": "world",
            "guide_size": SIZE,
            "strength": FACE_STRENGTH,
            **sampling,
        },
        "upscale": {"prompt": PORTRAIT, "tile": TILE, "overlap": TILE_OVERLAP, "strength": TILE_STRENGTH, **sampling},
    }


def score(output_dir: Path, photos: Path, scene: str, identity: int) -> list[dict[str, Any]]:
    """Each stage's identity similarity and lineup rank, face-found rate, motion and scene agreement,
    by the instruments."""
    evaluator = Evaluator(EvalSettings(clip_model="none", dino_model="none", face_model="world"))
    results = []
    for stage, label in STAGES.items():
        video = output_dir / f"{stage}.mp4"
        result = evaluator.evaluate(Entry(video, "", photos)) | {"stage": label}
        frames, instruments = list(to_uint8(read_video(video))), world_instruments()
        result["scene_agreement"] = instruments.scene_share(frames, scene)
        result["lineup_rank"] = lineup_rank(instruments.embed_faces(frames), identity)
        results.append(result)
    write_json({"scene": scene, "stages": results}, output_dir / "metrics.json")
    return results


def contact_sheet(output_dir: Path, photos: Path, path: Path, thumb: int = 96) -> Path:
    """Rows: the identity's photos, then every other frame of each stage's video."""
    rows = [[np.asarray(Image.open(p)) for p in sorted(photos.glob("photo-?.png"))]]
    rows += [list(to_uint8(read_video(output_dir / f"{stage}.mp4")))[::2] for stage in STAGES]
    sheet = Image.new("RGB", (thumb * max(map(len, rows)), thumb * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            sheet.paste(Image.fromarray(image).resize((thumb, thumb), Image.Resampling.NEAREST), (x * thumb, y * thumb))
    with atomic_path(path) as partial:
        sheet.save(partial, format="PNG")
    return path


def run_demo(output_dir: Path = Path("outputs/demo"), settings: DemoSettings | None = None) -> Path:
    """Run the demo into `output_dir`; returns the final video (metrics and contact sheet beside it)."""
    settings = settings or DemoSettings()
    if settings.identity not in HELD_OUT:
        raise ValueError(
            f"identity {settings.identity} is not held out from the world model's training: "
            f"choose one of {HELD_OUT[0]} to {HELD_OUT[-1]}"
        )
    photos = output_dir / "photos"
    shots = world.write_identity_photos(photos, settings.identity)
    scene = new_scene({shot.scene for shot in shots})
    video = run_chain(demo_config(output_dir, photos, scene, settings), "demo")
    results = score(output_dir, photos, scene, settings.identity)
    contact_sheet(output_dir, photos, output_dir / "contact-sheet.png")
    table = format_table(results).replace("| video |", "| stage |")
    for result in results:
        table = table.replace(f"| {Path(result['video']).name} |", f"| {result['stage']} |", 1)
    print(f"{world.character(settings.identity).description}, learned from 5 photos, {scene}:\n{table}")
    print("scene agreement: " + json.dumps({r["stage"]: round(r["scene_agreement"], 2) for r in results}))
    ranks = json.dumps({r["stage"]: r["lineup_rank"] for r in results})
    print(f"rank of the identity among {len(HELD_OUT)} held-out ones (1: recognised): {ranks}")
    return video
