"""What the studio's buttons do, on the functions the CLI uses: no second implementation.

Training is `magicme train` into the workspace (resumed from its checkpoint when the same
settings run again); a render is `magicme run` with a generation section and, when asked,
Face VCD and Tiled VCD sections, then `magicme eval`'s scores and a contact sheet. None of
this imports the web framework, so it is tested directly as well as through the page.
"""

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from magicme import registry
from magicme.chain import run_chain, training_run
from magicme.errors import SettingError
from magicme.identity.files import PLACEHOLDER
from magicme.interrupts import stop_when
from magicme.io.files import write_json
from magicme.io.sheets import image_grid
from magicme.io.video import read_video, to_uint8
from magicme.settings import (
    EvalSettings,
    FaceSettings,
    GenerationSettings,
    ModelSettings,
    TrainingSettings,
    UpscaleSettings,
    from_mapping,
)
from magicme.studio.workspace import IdentityEntry, Workspace, checked_name

STAGES = {"generation": "T2V VCD", "refine_face": "+ Face VCD", "upscale": "+ 2x upscale"}
CUSTOM = "custom"  # a model the user names, not a preset


@dataclasses.dataclass(frozen=True)
class StudioModel:
    """The model the page uses: a preset's weights and settings, or weights the user named."""

    key: str  # a preset's name, or CUSTOM
    preset: registry.ModelPreset

    @property
    def settings(self) -> ModelSettings:
        return from_mapping(ModelSettings, self.preset.model, "the studio's model")

    def describe(self) -> str:
        if self.key != CUSTOM:
            return self.preset.label
        model = self.settings
        parts = [f"base {model.base_model}", f"motion {model.motion_adapter}"]
        if model.motion_lora:
            parts.append(f"motion LoRA {model.motion_lora} x {model.motion_lora_scale}")
        return ", ".join(parts) + f" on {model.device}"


def custom_preset(model: dict[str, Any]) -> registry.ModelPreset:
    """Weights the user named, with magicme's defaults (the reference's settings) for every stage."""
    known = {field.name for field in dataclasses.fields(ModelSettings)} - {"identities"}
    values = {key: value for key, value in model.items() if key in known and value not in (None, "")}
    from_mapping(ModelSettings, values, "the model form")  # refuses unknown devices, dtypes ...
    return registry.ModelPreset(label="your model", model=values)


def studio_model(workspace: Workspace) -> StudioModel:
    """The model remembered in the workspace; the first preset (the built-in world) the first time."""
    choice = workspace.model_choice()
    key = choice.get("preset") or next(iter(registry.model_preset_names()), CUSTOM)
    if key == CUSTOM:
        return StudioModel(CUSTOM, custom_preset(choice.get("model", {})))
    return StudioModel(key, registry.model_preset(key))


def choose_model(workspace: Workspace, key: str, model: dict[str, Any] | None = None) -> StudioModel:
    """Remember a preset, or the user's weights (checked as settings before they are kept)."""
    if key == CUSTOM:
        preset = custom_preset(model or {})
        if not preset.model.get("base_model"):
            raise SettingError("base_model", "name the base model: a hub id, a folder or a .safetensors file")
        workspace.remember_model({"preset": CUSTOM, "model": preset.model})
        return StudioModel(CUSTOM, preset)
    chosen = StudioModel(key, registry.model_preset(key))
    workspace.remember_model({"preset": key})
    return chosen


# Identities ------------------------------------------------------------------------------------
def training_settings(
    workspace: Workspace, model: StudioModel, name: str, class_word: str, masks: str, steps: int
) -> TrainingSettings:
    """`magicme train`'s settings for an identity whose photos are in the workspace."""
    folder = workspace.identity_folder(name)
    values = model.preset.training | {
        "photos": str(folder / "photos"),
        "name": checked_name(name),
        "class_word": (class_word or "").strip() or model.preset.training.get("class_word", "person"),
        "masks": masks,
        "steps": int(steps),
        "base_model": model.settings.base_model,
        "output_dir": str(folder),
    }
    if model.key == CUSTOM:
        values["device"] = model.settings.device
    return from_mapping(TrainingSettings, values, "the training form")


def check_masks(settings: TrainingSettings) -> Path:
    """The mask contact sheet of the photos, as training will mask them, without training."""
    from magicme.identity.masks import contact_sheet, prepare_masks
    from magicme.identity.photos import load_photos

    run_dir = Path(settings.output_dir)
    photos = load_photos(Path(settings.photos), settings.resolution)
    prompt = settings.mask_prompt or settings.class_word
    masked = prepare_masks(photos, settings.masks, prompt, run_dir / "masks", tuple(settings.mask_models), "cpu")
    return contact_sheet(masked, run_dir / "masks.png")


def train(settings: TrainingSettings, cancel: threading.Event) -> Path:
    """Learn the identity; a Cancel (`cancel` set) stops after the step and keeps a checkpoint that
    the same settings resume from (KeyboardInterrupt, as Ctrl-C in the CLI)."""
    from magicme.identity.train import train_identity

    with stop_when(cancel):
        return train_identity(training_run(settings, Path(settings.output_dir)))


# Renders ---------------------------------------------------------------------------------------
def named_identities(workspace: Workspace, prompt: str) -> list[IdentityEntry]:
    """The identities a prompt names, each of which must exist in the workspace."""
    names = dict.fromkeys(name.lower() for name in PLACEHOLDER.findall(prompt))
    return [workspace.entry(name) for name in names]  # unknown -> "unknown identity <name>: train it or upload ..."


def identity_phrase(entries: list[IdentityEntry]) -> str:
    """`close up photo of a <alice> woman and a <bob> man`: the V2V stages' prompt, which names who is
    in the frame but not the scene (each stage sees part of it)."""
    who = " and ".join(f"a <{entry.name}> {entry.class_word}" for entry in entries)
    return f"close up photo of {who}" if who else "close up photo"


def render(
    workspace: Workspace,
    model: StudioModel,
    generation: dict[str, Any],
    face_vcd: bool,
    upscale_strength: float | None,
) -> Path:
    """Render a clip and the stages asked for into a new render folder; returns the folder.

    `upscale_strength`: None for no upscale, 0 for Lanczos and sharpening only, above 0 for
    Tiled VCD at that strength.
    """
    # 1. Check the request before anything loads
    if not str(generation.get("prompt", "")).strip():
        raise SettingError("prompt", "write a prompt, e.g. 'a photo of <alice> woman on the beach'")
    entries = named_identities(workspace, generation["prompt"])
    settings = from_mapping(GenerationSettings, model.preset.generation | generation, "the generation form")
    v2v = {"prompt": identity_phrase(entries), "seed": settings.seed}
    stages: dict[str, Any] = {"generation": dataclasses.asdict(settings)}
    if face_vcd:
        stages["refine_face"] = dataclasses.asdict(from_mapping(FaceSettings, model.preset.refine_face | v2v, "Face"))
    if upscale_strength is not None:
        upscale = model.preset.upscale | v2v | {"strength": float(upscale_strength)}
        stages["upscale"] = dataclasses.asdict(from_mapping(UpscaleSettings, upscale, "the upscale form"))

    # 2. The chain, as `magicme run` runs it, in a new render folder
    names = [entry.name for entry in entries]
    request = {"model": model.key, "model_label": model.describe(), "identities": names, "seed": settings.seed}
    folder = workspace.new_render(request | {"stages": stages})
    files = [str(entry.file) for entry in entries]
    chain_model = dataclasses.asdict(model.settings) | {"identities": files}
    run_chain({"output_dir": str(folder), "model": chain_model, **stages}, "the studio")

    # 3. Scores and a contact sheet of every stage
    write_json(score(model, folder, entries, settings.prompt), folder / "metrics.json")
    rows = [list(to_uint8(read_video(video)))[::2] for video in stage_videos(folder)]
    image_grid(rows, folder / "contact-sheet.png")
    return folder


def read_request(folder: Path) -> dict[str, Any]:
    """What the page asked for, as `render` recorded it in the render folder."""
    return json.loads((folder / "request.json").read_text(encoding="utf-8"))


def read_metrics(folder: Path) -> dict[str, Any]:
    path = folder / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"error": "no metrics yet"}


def stage_videos(folder: Path) -> list[Path]:
    """The render's videos in stage order."""
    return [folder / f"{stage}.mp4" for stage in STAGES if (folder / f"{stage}.mp4").is_file()]


def score(model: StudioModel, folder: Path, entries: list[IdentityEntry], prompt: str) -> dict[str, Any]:
    """`magicme eval`'s motion scores and, against the first identity's photos, face similarity per stage."""
    from magicme.eval.evaluate import Entry, Evaluator

    photos = next((entry.photos for entry in entries if entry.photos), None)
    face_model = model.preset.face_model if photos else "none"
    try:
        evaluator = Evaluator(EvalSettings(clip_model="none", dino_model="none", face_model=face_model))
        stages = {}
        for video in stage_videos(folder):
            result = evaluator.evaluate(Entry(video, prompt, photos or folder))
            result.pop("face_similarity_per_frame", None)
            stages[STAGES[video.stem]] = result
    except (ValueError, OSError, ImportError) as error:  # a missing embedder must not cost the video
        return {"error": f"metrics unavailable: {error}"}
    return {"references": str(photos) if photos else None, "stages": stages}


def metrics_table(metrics: dict[str, Any]) -> str:
    """The scores as a Markdown table for the page."""
    if "error" in metrics:
        return metrics["error"]
    lines = ["| stage | face similarity | face found | flicker | motion |", "|---|---|---|---|---|"]
    for stage, result in metrics["stages"].items():
        similarity = result.get("face_similarity", {}).get("mean")
        found = result.get("face_detection_rate")
        cells = [
            "n/a" if similarity is None else f"{similarity:.3f}",
            "n/a" if found is None else f"{found:.0%}",
            f"{result['flicker']:.4f}",
            f"{result['dynamic_degree']:.4f}",
        ]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def side_by_side(folder: Path) -> np.ndarray | None:
    """The middle frame of each stage, side by side at the largest stage's height, to compare stages."""
    middles = [to_uint8(read_video(video)) for video in stage_videos(folder)]
    if not middles:
        return None
    frames = [Image.fromarray(clip[len(clip) // 2]) for clip in middles]
    height = max(frame.height for frame in frames)
    tiles = [frame.resize((frame.width * height // frame.height, height), Image.Resampling.NEAREST) for frame in frames]
    return np.concatenate([np.asarray(tile) for tile in tiles], axis=1)
