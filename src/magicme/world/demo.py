"""The built-in demo: the whole VCD chain on the miniature world's trained model, offline, on a CPU.

It learns a held-out identity (one the model never saw) from five "photos" with their
ground-truth masks, renders it with the 3D noise prior in a scene that none of the photos
shows, upscales 2x and scores each stage with the world's instruments. Face VCD and Tiled
VCD are off, as in the world's recipe, because neither raises identity in the world
(README: the miniature world); `face_vcd` and `tiled_vcd` turn them on. With two
identities (`run_group_demo`), each is learned from its own photos, then both are filmed
together, each bound to its half of the frame, beside the same clip with the prompt shared.
It goes through `magicme run`, so a second run reuses what is done.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from magicme.chain import run_chain, train_together
from magicme.eval.evaluate import Entry, Evaluator, format_table
from magicme.io.files import write_json
from magicme.io.sheets import image_grid
from magicme.io.video import read_video, to_uint8
from magicme.settings import EvalSettings
from magicme.world import scenes
from magicme.world.accuracy import HELD_OUT, lineup_rank
from magicme.world.groups import score_group
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


def new_scene(photo_scenes: list[str]) -> str:
    """The first scene that none of the photos shows (or, if they show all, that fewest show)."""
    return min(scenes.SCENES, key=photo_scenes.count)


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


def check_held_out(identity: int) -> None:
    if identity not in HELD_OUT:
        raise ValueError(
            f"identity {identity} is not held out from the world model's training: "
            f"choose one of {HELD_OUT[0]} to {HELD_OUT[-1]}"
        )


def run_demo(output_dir: Path = Path("outputs/demo"), settings: DemoSettings | None = None) -> Path:
    """Run the demo into `output_dir`; returns the final video (metrics and contact sheet beside it)."""
    settings = settings or DemoSettings()
    check_held_out(settings.identity)
    world_model_paths(settings.model_dir)  # a missing model is refused before any work
    photos = output_dir / "photos"
    shots = scenes.write_identity_photos(photos, settings.identity)
    scene = new_scene([shot.scene for shot in shots])
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


@dataclass
class GroupDemoSettings:
    identities: tuple[int, ...] = RECIPE.demo_identities(2)
    training_steps: int = RECIPE.training_steps
    inference_steps: int = RECIPE.inference_steps
    seed: int = 0
    model_dir: str | None = None  # a world model folder (base/, motion_adapter/); default: the shipped one


GROUP_STAGES = {  # video (under the output folder) -> the label the demo prints
    "shared/generation.mp4": "T2V, prompt shared (no regions)",
    "generation.mp4": "T2V, regional binding",
    "upscale.mp4": "+ 2x upscale (Lanczos, sharpened)",
}


def run_group_demo(output_dir: Path = Path("outputs/demo-2"), settings: GroupDemoSettings | None = None) -> Path:
    """Learn two held-out identities, each from its own photos, and film them together (left to right
    in the recipe's names: <hero>, <friend>); returns the final video, with metrics and contact sheet."""
    settings = settings or GroupDemoSettings()
    if len(settings.identities) != 2 or len(set(settings.identities)) != 2:
        raise ValueError(f"the group demo films two different identities, got {list(settings.identities)}")
    for identity in settings.identities:
        check_held_out(identity)
    base, motion = world_model_paths(settings.model_dir)
    recipe = dataclasses.replace(
        RECIPE, training_steps=settings.training_steps, inference_steps=settings.inference_steps
    )
    names = recipe.group_names[: len(settings.identities)]
    model = {"base_model": str(base), "motion_adapter": str(motion), "device": "cpu"}
    trainings, photo_scenes = [], []
    for identity, name in zip(settings.identities, names, strict=True):
        shots = scenes.write_identity_photos(output_dir / name / "photos", identity)
        photo_scenes += [shot.scene for shot in shots]
        training = recipe.training(output_dir / name / "photos", settings.seed, name=name, base_model=str(base))
        trainings.append(
            {"output_dir": str(output_dir / name), "model": model, "training": dataclasses.asdict(training)}
        )
    train_together(trainings, [f"demo: {name}" for name in names])
    learned = {**model, "identities": [str(output_dir / name / "training" / f"{name}.safetensors") for name in names]}
    scene = new_scene(photo_scenes)
    prompt = recipe.group_prompt(scene, names)
    generation = dataclasses.asdict(recipe.group_generation(prompt, settings.seed))
    shared = generation | {"layout": "shared"}
    run_chain({"output_dir": str(output_dir / "shared"), "model": learned, "generation": shared}, "demo")
    upscale = dataclasses.asdict(recipe.chain_upscale(settings.seed))
    video = run_chain(
        {"output_dir": str(output_dir), "model": learned, "generation": generation, "upscale": upscale}, "demo"
    )
    results = [
        {"stage": label}
        | score_group(list(to_uint8(read_video(output_dir / path))), list(settings.identities)).record()
        for path, label in GROUP_STAGES.items()
    ]
    record = {"scene": scene, "prompt": prompt, "identities": list(settings.identities), "stages": results}
    write_json(record, output_dir / "metrics.json")
    photos = [sorted((output_dir / name / "photos").glob("photo-?.png")) for name in names]
    rows = [[np.asarray(Image.open(path)) for path in paths] for paths in photos]
    image_grid(
        rows + [list(to_uint8(read_video(output_dir / path)))[::2] for path in GROUP_STAGES],
        output_dir / "contact-sheet.png",
    )
    who = " and ".join(f"<{name}> ({identity})" for name, identity in zip(names, settings.identities, strict=True))
    print(f'{who}, each learned from 5 photos, filmed together, left to right, {scene}: "{prompt}"')
    print(group_table(results))
    return video


def group_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| stage | lineup rank in own region (1: recognised, of 40) | both in place | swapped |",
        "|---|---|---|---|",
    ]
    for result in results:
        ranks = ", ".join(str(rank) for rank in result["lineup_ranks"])
        lines.append(f"| {result['stage']} | {ranks} | {result['both_right']:.2f} | {result['swapped']:.2f} |")
    return "\n".join(lines)
