"""`magicme run config.yaml`: photos to finished video, one stage after another.

The config has a section per stage, in this order: `train`, then `generate` or `edit`,
then `refine_face`, then `upscale`; a missing section skips its stage. `model` holds the
weights all stages share and `output_dir` where everything goes (`input` is the video to
edit). Each finished stage leaves `<stage>.done` holding a fingerprint of its settings and
its input; a re-run skips every stage whose output and fingerprint still match, so a run
killed mid-way resumes where it stopped, and changing a stage's settings redoes it and
the stages after it.
"""

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from magicme.config import (
    EditSettings,
    FaceSettings,
    GenerationSettings,
    ModelSettings,
    TrainingSettings,
    UpscaleSettings,
    from_mapping,
)
from magicme.files import write_json

log = logging.getLogger("magicme")

STAGES: dict[str, type] = {
    "train": TrainingSettings,
    "generate": GenerationSettings,
    "edit": EditSettings,
    "refine_face": FaceSettings,
    "upscale": UpscaleSettings,
}
TOP_LEVEL = {"output_dir", "input", "model", *STAGES}


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


def fingerprint(settings: dict[str, Any], sources: list[Path]) -> str:
    """Settings and the content of every input (video, photos, identity files): what a stage's output depends on."""
    content = json.dumps(settings, sort_keys=True, default=str) + "".join(map(_file_digest, sources))
    return hashlib.sha256(content.encode()).hexdigest()


def stage_inputs(name: str, settings: Any, model: ModelSettings, video: Path | None) -> list[Path]:
    if name == "train":
        return [Path(settings.photos)]
    identities = [Path(spec.rpartition("=")[2]) for spec in model.identities]
    return ([video] if video and name != "generate" else []) + identities


def parse_chain(config: dict[str, Any], source: str) -> tuple[Path, Path | None, ModelSettings, dict[str, Any]]:
    unknown = sorted(set(config) - TOP_LEVEL)
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {unknown}; expected {sorted(TOP_LEVEL)}")
    if "generate" in config and "edit" in config:
        raise ValueError(f"{source}: choose `generate` (a new video) or `edit` (an existing one), not both")
    if "edit" in config and "input" not in config:
        raise ValueError(f"{source}: `edit` needs `input:`, the video to edit")
    if not any(stage in config for stage in ("generate", "edit")) and "input" not in config:
        raise ValueError(f"{source}: with neither `generate` nor `edit`, give `input:`, the video to refine")
    model = from_mapping(ModelSettings, config.get("model") or {}, f"{source} [model]")
    stages = {
        name: from_mapping(cls, config[name] or {}, f"{source} [{name}]")
        for name, cls in STAGES.items()
        if name in config
    }
    source_video = Path(config["input"]) if "input" in config else None
    return Path(config.get("output_dir") or "runs/chain"), source_video, model, stages


def run_chain(config: dict[str, Any], source: str = "config") -> Path:
    """Run every stage the config names, skipping those already done; returns the final video."""
    from magicme.render import render
    from magicme.stages import edit_video, refine_face_video, upscale_video
    from magicme.training import train_identity

    output_dir, video, model, stages = parse_chain(config, source)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, settings in stages.items():
        record = {name: dataclasses.asdict(settings)} | (
            {"model": dataclasses.asdict(model)} if name != "train" else {}
        )
        output = output_dir / ("train" if name == "train" else f"{name}.mp4")
        marker = output_dir / f"{name}.done"
        key = fingerprint(record, stage_inputs(name, settings, model, video))
        if output.exists() and marker.is_file() and json.loads(marker.read_text())["fingerprint"] == key:
            log.info("%s: done before with the same settings and input, skipping", name)
        else:
            log.info("%s: running", name)
            if name == "train":
                resume = (output / "checkpoints").is_dir()  # a killed training run continues
                train_identity(dataclasses.replace(settings, output_dir=str(output), resume=resume))
            elif name == "generate":
                render(model, settings, output)
            elif name == "edit":
                edit_video(model, settings, video, output)
            elif name == "refine_face":
                refine_face_video(model, settings, video, output)
            else:
                upscale_video(model, settings, video, output)
            write_json({"fingerprint": key, "output": str(output)}, marker)
        if name == "train":
            identity = output / f"{settings.name}.safetensors"
            model = dataclasses.replace(model, identities=[*model.identities, str(identity)])
        else:
            video = output
    if video is None:
        raise ValueError(f"{source}: no stage produced a video")
    return video
