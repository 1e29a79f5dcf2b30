"""The built-in demo: the whole VCD chain on the miniature world's trained model, offline, on a CPU.

It learns a held-out identity (one the model never saw) from five "photos" with their
ground-truth masks, renders it with the 3D noise prior in a scene that none of the photos
shows, upscales 2x and scores each stage with the world's instruments. Face VCD and Tiled
VCD are off, as in the world's recipe, because neither raises identity in the world
(README: the miniature world); `face_vcd` and `tiled_vcd` turn them on. It goes through
`magicme run`, so a second run reuses what is done.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from magicme.chain import run_chain
from magicme.eval.evaluate import Entry, Evaluator, format_table
from magicme.io.files import write_json
from magicme.io.sheets import image_grid
from magicme.io.video import read_video, to_uint8
from magicme.settings import EvalSettings
from magicme.world import scenes
from magicme.world.accuracy import HELD_OUT, lineup_rank
from magicme.world.instruments import world_instruments
from magicme.world.model import world_model_paths
from magicme.world.recipe import RECIPE


@dataclass
class DemoSettings:
    identity: int = RECIPE.demo_identity
    training_steps: int = RECIPE.training_steps
    inference_steps: int = RECIPE.inference_steps
    seed: int = 0
    model_dir: str | None = None  # a world model folder (base/, motion_adapter/); default: the shipped one
    face_vcd: bool = RECIPE.face_vcd_in_chain
    tiled_vcd: bool = RECIPE.tiled_vcd_in_chain

    @property
    def stages(self) -> dict[str, str]:
        """The chain's stages, in order, with the labels its table prints."""
        face = {"refine_face": "+ Face VCD"} if self.face_vcd else {}
        upscale = "+ Tiled VCD (2x)" if self.tiled_vcd else "+ 2x upscale (Lanczos, sharpened)"
        return {"generation": "T2V VCD"} | face | {"upscale": upscale}


def new_scene(photo_scenes: set[str]) -> str:
    """The first scene that none of the identity's photos shows."""
    return next(scene for scene in scenes.SCENES if scene not in photo_scenes)


def demo_config(output_dir: Path, photos: Path, scene: str, settings: DemoSettings) -> dict[str, Any]:
    """The `magicme run` config of the demo: learn the identity, film it, (refine the face,) upscale."""
    base, motion = world_model_paths(settings.model_dir)
    recipe = dataclasses.replace(
        RECIPE,
        training_steps=settings.training_steps,
        inference_steps=settings.inference_steps,
        tiled_vcd_in_chain=settings.tiled_vcd,
    )
    sections = {
        "training": recipe.training(photos, settings.seed, base_model=str(base)),
        "generation": recipe.generation(recipe.prompt(scene), settings.seed),
    }
    if settings.face_vcd:
        sections["refine_face"] = recipe.face(settings.seed)
    sections["upscale"] = recipe.chain_upscale(settings.seed)
    model = {"base_model": str(base), "motion_adapter": str(motion), "device": "cpu"}
    return {"output_dir": str(output_dir), "model": model} | {
        name: dataclasses.asdict(values) for name, values in sections.items()
    }


def score(output_dir: Path, photos: Path, scene: str, settings: DemoSettings) -> list[dict[str, Any]]:
    """Each stage's identity similarity and lineup rank, face-found rate, motion and scene agreement,
    by the instruments."""
    evaluator = Evaluator(EvalSettings(clip_model="none", dino_model="none", face_model="world"))
    results = []
    for stage, label in settings.stages.items():
        video = output_dir / f"{stage}.mp4"
        result = evaluator.evaluate(Entry(video, "", photos)) | {"stage": label}
        frames, instruments = list(to_uint8(read_video(video))), world_instruments()
        result["scene_agreement"] = instruments.scene_share(frames, scene)
        result["lineup_rank"] = lineup_rank(instruments.embed_faces(frames), settings.identity)
        results.append(result)
    write_json({"scene": scene, "stages": results}, output_dir / "metrics.json")
    return results


def contact_sheet(output_dir: Path, photos: Path, stages: list[str], path: Path, thumb: int = 96) -> Path:
    """Rows: the identity's photos, then every other frame of each stage's video."""
    rows = [[np.asarray(Image.open(p)) for p in sorted(photos.glob("photo-?.png"))]]
    rows += [list(to_uint8(read_video(output_dir / f"{stage}.mp4")))[::2] for stage in stages]
    return image_grid(rows, path, thumb)


def run_demo(output_dir: Path = Path("outputs/demo"), settings: DemoSettings | None = None) -> Path:
    """Run the demo into `output_dir`; returns the final video (metrics and contact sheet beside it)."""
    settings = settings or DemoSettings()
    if settings.identity not in HELD_OUT:
        raise ValueError(
            f"identity {settings.identity} is not held out from the world model's training: "
            f"choose one of {HELD_OUT[0]} to {HELD_OUT[-1]}"
        )
    photos = output_dir / "photos"
    shots = scenes.write_identity_photos(photos, settings.identity)
    scene = new_scene({shot.scene for shot in shots})
    video = run_chain(demo_config(output_dir, photos, scene, settings), "demo")
    results = score(output_dir, photos, scene, settings)
    contact_sheet(output_dir, photos, list(settings.stages), output_dir / "contact-sheet.png")
    table = format_table(results).replace("| video |", "| stage |")
    for result in results:
        table = table.replace(f"| {Path(result['video']).name} |", f"| {result['stage']} |", 1)
    print(f"{scenes.character(settings.identity).description}, learned from 5 photos, {scene}:\n{table}")
    print("scene agreement: " + json.dumps({r["stage"]: round(r["scene_agreement"], 2) for r in results}))
    ranks = json.dumps({r["stage"]: r["lineup_rank"] for r in results})
    print(f"rank of the identity among {len(HELD_OUT)} held-out ones (1: recognised): {ranks}")
    return video
