"""`magicme batch manifest.yaml`: identities x prompts x seeds x stages, expanded into jobs.

A manifest names its identities (a photo folder to learn from, or an identity file), its
prompts (`{identity}` becomes `<name> class word`), its seeds, and the stage sections of
`magicme run` (`training`, `generation`, `refine_face`, `upscale`) plus `evaluation`:

    output_dir: batch/beach
    preset: lightning-4            # optional, as in a chain
    model: {base_model: stable-diffusion-v1-5/stable-diffusion-v1-5}
    identities:
      alice: {photos: photos/alice, class_word: woman}
      bob: {file: identities/bob.safetensors}
    prompts: ["a photo of {identity} on the beach", "a photo of {identity} in the snow"]
    seeds: [0, 1]
    training: {steps: 300}
    train_together: 4              # optional: up to 4 identities learn at once on one model
    generation: {num_frames: 16}
    refine_face: {prompt: "close up photo of {identity}"}
    evaluation: {face_model: dlib}

Each identity learned from photos is one training job; each identity x prompt x seed is one
clip job (a `magicme run` chain in its own folder, then `magicme eval` on its final video),
which needs its identity's training job. With `train_together: N`, a worker takes up to N
ready training jobs at once and learns them on one model (`magicme.train_identities`); if
that fails, it trains each alone, so one bad photo folder fails only its own identity. A
job's folder holds what `magicme run` keeps, so its fingerprints make a rerun skip finished
stages and redo only what a changed setting or input touches.
"""

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magicme.settings import EvalSettings, from_mapping

CLIP_STAGES = ("generation", "refine_face", "upscale")
MANIFEST_KEYS = {"output_dir", "preset", "model", "identities", "prompts", "seeds", "training", *CLIP_STAGES}
MANIFEST_KEYS |= {"evaluation", "train_together"}
LEARNED_ON = ("base_model", "device")  # model settings the training jobs share unless `training` sets them
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Job:
    """One unit of work: a `magicme run` config in its own folder, and the jobs it must wait for."""

    name: str  # e.g. "identities/alice" or "clips/alice/0-seed1"; also its folder under the output
    chain: dict[str, Any]
    needs: tuple[str, ...] = ()
    evaluation: dict[str, Any] | None = None  # EvalSettings values for the final video, or None
    references: str | None = None  # the identity's photos, for face similarity
    prompt: str = ""


@dataclass
class Manifest:
    output_dir: Path
    jobs: list[Job] = field(default_factory=list)
    train_together: int = 1  # training jobs a worker may run at once on one model


class ManifestError(ValueError):
    """A manifest that cannot be expanded; the message names the key and what to write."""


def _identity_line(name: str, spec: Any, source: str) -> tuple[str, str | None, str | None]:
    """(class word, photos or None, identity file or None) of one `identities` entry."""
    if not NAME.match(name):
        raise ManifestError(f"{source}: identity name {name!r} must be letters, digits, '-' or '_'")
    if not isinstance(spec, dict) or ("photos" in spec) == ("file" in spec):
        raise ManifestError(f"{source}: identity {name} needs `photos: FOLDER` or `file: IDENTITY_FILE` (one of them)")
    unknown = sorted(set(spec) - {"photos", "file", "class_word", "references"})
    if unknown:
        raise ManifestError(
            f"{source}: identity {name} has unknown key(s) {unknown}; use photos, file, class_word, references"
        )
    class_word = spec.get("class_word")
    if "file" in spec and class_word is None:
        from magicme.identity.files import load_identity

        class_word = load_identity(spec["file"]).class_word
    return class_word or "person", spec.get("photos"), spec.get("file")


def _fill(values: Any, phrase: str) -> Any:
    """A section with `{identity}` in its prompts replaced by the identity's phrase."""
    if isinstance(values, str):
        return values.replace("{identity}", phrase)
    if isinstance(values, dict):
        return {key: _fill(value, phrase) for key, value in values.items()}
    return values


def expand(record: dict[str, Any], source: str = "manifest") -> Manifest:
    """The manifest's jobs, training first, each with the chain config it runs."""
    unknown = sorted(set(record) - MANIFEST_KEYS)
    if unknown:
        raise ManifestError(f"{source}: unknown key(s) {unknown}; expected {sorted(MANIFEST_KEYS)}")
    identities, prompts = record.get("identities") or {}, record.get("prompts") or []
    seeds = record.get("seeds", [0])
    if not identities or not isinstance(identities, dict):
        raise ManifestError(f"{source}: `identities` must name at least one identity (name: {{photos: ...}})")
    if not prompts or not all(isinstance(prompt, str) and "{identity}" in prompt for prompt in prompts):
        raise ManifestError(f"{source}: `prompts` must be a list of prompts, each with {{identity}} where it goes")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(seed, int) for seed in seeds):
        raise ManifestError(f"{source}: `seeds` must be a list of integers")
    together = record.get("train_together", 1)
    if not isinstance(together, int) or isinstance(together, bool) or together < 1:
        raise ManifestError(f"{source}: `train_together` must be a whole number of identities, 1 or more")
    if "evaluation" in record:
        from_mapping(EvalSettings, record["evaluation"] or {}, f"{source} [evaluation]")  # fail before any work
    output_dir = Path(record.get("output_dir") or "batch")
    shared = {key: copy.deepcopy(record[key]) for key in ("preset", "model") if key in record}
    manifest, clips = Manifest(output_dir, train_together=together), []
    for name, spec in identities.items():
        class_word, photos, identity_file = _identity_line(name, spec, source)
        references = photos or spec.get("references")
        if "evaluation" in record and references is None:
            raise ManifestError(
                f"{source}: identity {name} has no photos to score its clips against: "
                "add `references: PHOTO_FOLDER`, or drop `evaluation`"
            )
        needs: tuple[str, ...] = ()
        if photos is not None:
            folder = output_dir / "identities" / name
            training = {key: value for key, value in (record.get("model") or {}).items() if key in LEARNED_ON}
            training |= dict(record.get("training") or {}) | {"photos": photos, "name": name, "class_word": class_word}
            manifest.jobs.append(Job(f"identities/{name}", shared | {"output_dir": str(folder), "training": training}))
            needs, identity_file = (f"identities/{name}",), str(folder / "training" / f"{name}.safetensors")
        model = dict(shared.get("model") or {})
        model["identities"] = [*model.get("identities", []), f"{name}={identity_file}"]
        phrase = f"<{name}> {class_word}"
        for index, prompt in enumerate(prompts):
            for seed in seeds:
                job_name = f"clips/{name}/{index}-seed{seed}"
                chain = shared | {"output_dir": str(output_dir / job_name), "model": model}
                chain |= clip_stages(record, prompt.replace("{identity}", phrase), phrase, seed)
                evaluation = dict(record["evaluation"] or {}) if "evaluation" in record else None
                clips.append(Job(job_name, chain, needs, evaluation, references, chain["generation"]["prompt"]))
    manifest.jobs += clips  # training first: a worker then starts what the clips wait for
    return manifest


def clip_stages(record: dict[str, Any], prompt: str, phrase: str, seed: int) -> dict[str, dict[str, Any]]:
    """A clip's chain sections: T2V with its prompt and seed, then the V2V stages the manifest names,
    whose prompt defaults to a close-up of the identity."""
    sections = {"generation": _fill(dict(record.get("generation") or {}), phrase) | {"prompt": prompt, "seed": seed}}
    for stage in CLIP_STAGES[1:]:
        if stage in record:
            values = _fill(dict(record[stage] or {}), phrase)
            sections[stage] = {"prompt": f"close up photo of a {phrase}"} | values | {"seed": seed}
    return sections
