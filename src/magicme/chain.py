"""`magicme run config.yaml`: photos to finished video, one stage after another.

The config has a section per stage, in this order: `training`, then `generation` or `edit`,
then `refine_face`, then `upscale`; a missing section skips its stage. The sections are
named as in every sidecar, so a sidecar's section can be pasted into a chain. `model` holds
the weights all stages share and `output_dir` where everything goes (`input` is the video
to edit). `preset: lightning-4` (or `lightning-8`, `lcm`) fills in the few-step weights
and sampling the sections leave unset (`magicme.models.presets`). Each finished stage
leaves `<stage>.done` holding a fingerprint of its settings and its input; a re-run skips
every stage whose output and fingerprint still match, so a run killed mid-way resumes
where it stopped, and changing a stage's settings redoes it and the stages after it.
"""

import dataclasses
import hashlib
import json
import logging
import shutil
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from magicme.io.files import write_json
from magicme.io.locks import exclusive
from magicme.models.presets import apply_preset
from magicme.settings import (
    EditSettings,
    FaceSettings,
    GenerationSettings,
    ModelSettings,
    TrainingSettings,
    UpscaleSettings,
    from_mapping,
)
from magicme.t2v.layout import with_regions_of

log = logging.getLogger("magicme")

STAGES: dict[str, type] = {
    "training": TrainingSettings,
    "generation": GenerationSettings,
    "edit": EditSettings,
    "refine_face": FaceSettings,
    "upscale": UpscaleSettings,
}
TOP_LEVEL = {"output_dir", "input", "preset", "model", *STAGES}
RENAMED = {"train": "training", "generate": "generation"}  # the names before 0.2, accepted for one release


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
    if name == "training":
        return [Path(settings.photos)]
    identities = [Path(spec.rpartition("=")[2]) for spec in model.identities]
    return ([video] if video and name != "generation" else []) + identities


def rename_old_sections(config: dict[str, Any], source: str) -> dict[str, Any]:
    """`train` and `generate` are `training` and `generation` now, as in sidecars; warn, once per name."""
    renamed = dict(config)
    for old, new in RENAMED.items():
        if old in renamed:
            if new in renamed:
                raise ValueError(f"{source}: `{old}` is the old name of `{new}`; keep only `{new}`")
            warnings.warn(f"{source}: the chain section `{old}` is now `{new}`", DeprecationWarning, stacklevel=3)
            renamed[new] = renamed.pop(old)
    return renamed


def training_run(settings: TrainingSettings, output: Path) -> TrainingSettings:
    """The training stage in `output`: a killed run with the same settings continues; one with other
    settings is this stage's old output and is redone from the start."""
    from magicme.identity.train import check_resumed_settings

    run = dataclasses.replace(settings, output_dir=str(output), resume=True)
    if (output / "checkpoints").is_dir():
        try:
            check_resumed_settings(run)
            return run
        except ValueError:
            log.info("training: its settings changed since %s was started; training again", output)
            shutil.rmtree(output)
    return dataclasses.replace(run, resume=False)


def parse_chain(config: dict[str, Any], source: str) -> tuple[Path, Path | None, ModelSettings, dict[str, Any]]:
    config = rename_old_sections(config, source)
    config = apply_preset(config, config.get("preset"), STAGES)
    unknown = sorted(set(config) - TOP_LEVEL)
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {unknown}; expected {sorted(TOP_LEVEL)}")
    if "generation" in config and "edit" in config:
        raise ValueError(f"{source}: choose `generation` (a new video) or `edit` (an existing one), not both")
    if "edit" in config and "input" not in config:
        raise ValueError(f"{source}: `edit` needs `input:`, the video to edit")
    if not any(stage in config for stage in STAGES):
        raise ValueError(f"{source}: names no stage; give at least one of {sorted(STAGES)}")
    refines = any(stage in config for stage in ("refine_face", "upscale"))
    if refines and not any(stage in config for stage in ("generation", "edit")) and "input" not in config:
        raise ValueError(f"{source}: with neither `generation` nor `edit`, give `input:`, the video to refine")
    model = from_mapping(ModelSettings, config.get("model") or {}, f"{source} [model]")
    stages = {
        name: from_mapping(cls, config[name] or {}, f"{source} [{name}]")
        for name, cls in STAGES.items()
        if name in config
    }
    for stage in ("refine_face", "upscale"):  # with several identities: where the clip put each one
        if "generation" in stages and stage in stages:
            stages[stage] = with_regions_of(stages["generation"], stages[stage])
    source_video = Path(config["input"]) if "input" in config else None
    return Path(config.get("output_dir") or "runs/chain"), source_video, model, stages


def run_chain(config: dict[str, Any], source: str = "config") -> Path:
    """Run every stage the config names, skipping those already done; returns the final video."""
    video = run_stages(config, source)
    if video is None:
        raise ValueError(f"{source}: no stage produced a video")
    return video


def run_stages(config: dict[str, Any], source: str = "config") -> Path | None:
    """`run_chain`, for configs that may end without a video (training alone)."""
    from magicme.identity.train import train_identity
    from magicme.t2v.generate import render
    from magicme.v2v.jobs import edit_video, refine_face_video, upscale_video

    output_dir, video, model, stages = parse_chain(config, source)
    with exclusive(output_dir):  # one chain per folder: two would race over its stages' markers
        for name, settings in stages.items():
            stage = Stage(name, settings, model, video, output_dir)
            if stage.done():
                log.info("%s: done before with the same settings and input, skipping", name)
            else:
                log.info("%s: running", name)
                if name == "training":
                    train_identity(training_run(settings, stage.output))
                elif name == "generation":
                    render(model, settings, stage.output)
                elif name == "edit":
                    edit_video(model, settings, video, stage.output)
                elif name == "refine_face":
                    refine_face_video(model, settings, video, stage.output)
                else:
                    upscale_video(model, settings, video, stage.output)
                stage.mark_done()
            if name == "training":
                identity = stage.output / f"{settings.name}.safetensors"
                model = dataclasses.replace(model, identities=[*model.identities, str(identity)])
            else:
                video = stage.output
    return video


def train_together(configs: list[dict[str, Any]], sources: list[str]) -> None:
    """Training-only chains whose identities learn together on one model (`train_identities`: one UNet
    call per step for all); those done before with the same settings and photos are skipped."""
    from magicme.identity.train import train_identities

    with ExitStack() as locks:
        pending = []
        for config, source in zip(configs, sources, strict=True):
            output_dir, _, model, stages = parse_chain(config, source)
            if list(stages) != ["training"]:
                raise ValueError(f"{source}: only training-only chains can train together, not {list(stages)}")
            locks.enter_context(exclusive(output_dir))
            stage = Stage("training", stages["training"], model, None, output_dir)
            if not stage.done():
                pending.append(stage)
        if pending:
            log.info("training: %s together", ", ".join(stage.settings.name for stage in pending))
            train_identities([training_run(stage.settings, stage.output) for stage in pending])
        for stage in pending:
            stage.mark_done()


@dataclass
class Stage:
    """One stage of a chain in its folder: its output, and the marker that says it is done with the
    settings and inputs it has now."""

    name: str
    settings: Any
    model: ModelSettings
    video: Path | None
    folder: Path

    @property
    def output(self) -> Path:
        return self.folder / ("training" if self.name == "training" else f"{self.name}.mp4")

    @cached_property
    def key(self) -> str:
        record = {self.name: dataclasses.asdict(self.settings)}
        if self.name != "training":
            record["model"] = dataclasses.asdict(self.model)
        return fingerprint(record, stage_inputs(self.name, self.settings, self.model, self.video))

    def done(self) -> bool:
        marker = self.folder / f"{self.name}.done"
        return self.output.exists() and marker.is_file() and json.loads(marker.read_text())["fingerprint"] == self.key

    def mark_done(self) -> None:
        write_json({"fingerprint": self.key, "output": str(self.output)}, self.folder / f"{self.name}.done")
