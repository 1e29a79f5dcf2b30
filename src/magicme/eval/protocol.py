"""A benchmark protocol: prompts x seeds x identities, read by `generate` and by `eval`.

    identities:
      alice: {file: runs/alice/alice.safetensors, references: photos/alice, class_word: woman}
    prompts: ["a photo of {identity} on the beach", "{identity} cooking in a kitchen"]
    seeds: [0, 1, 2, 3]
    generation: {num_frames: 16, gamma: 0.1}     # optional GenerationSettings

`{identity}` becomes `<alice> woman`. `magicme generate --protocol P --output-dir D`
renders every combination as D/alice-p0-s0.mp4 ... (skipping videos already there), and
`magicme eval --protocol P --videos-dir D` scores the same list.
"""

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from magicme.eval.evaluate import Entry
from magicme.settings import GenerationSettings, ModelSettings, from_mapping, read_config_file

log = logging.getLogger("magicme")


@dataclass
class ProtocolIdentity:
    file: str
    references: str
    class_word: str = "person"


@dataclass
class Job:
    identity: str
    prompt: str
    seed: int
    video_name: str
    references: Path
    class_word: str


@dataclass
class Protocol:
    identities: dict[str, ProtocolIdentity]
    prompts: list[str]
    seeds: list[int]
    generation: dict[str, Any]

    def jobs(self) -> list[Job]:
        """Every identity x prompt x seed, in a fixed order with stable video names."""
        return [
            Job(
                identity=name,
                prompt=template.format(identity=f"<{name}> {who.class_word}"),
                seed=seed,
                video_name=f"{name}-p{index}-s{seed}.mp4",
                references=Path(who.references),
                class_word=who.class_word,
            )
            for name, who in self.identities.items()
            for index, template in enumerate(self.prompts)
            for seed in self.seeds
        ]

    def with_generation(self, values: dict[str, Any]) -> "Protocol":
        """This protocol with generation settings given beside it (say, `gamma`) applied to every video;
        each video's `prompt` and `seed` come from the protocol's lists alone."""
        fixed = sorted({"prompt", "seed"} & set(values))
        if fixed:
            named = " and ".join(f"`{name}`" for name in fixed)
            raise ValueError(f"a protocol sets each video's {named} from its `prompts` and `seeds`; set them there")
        generation = self.generation | values
        from_mapping(GenerationSettings, generation, "generation settings")  # typos fail now, not mid-run
        return dataclasses.replace(self, generation=generation)

    def entries(self, videos_dir: Path) -> list[Entry]:
        """What `eval` scores: each job's video in `videos_dir`, which must exist."""
        entries = [Entry(videos_dir / j.video_name, j.prompt, j.references, j.class_word) for j in self.jobs()]
        missing = [entry.video.name for entry in entries if not entry.video.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} protocol video(s) missing in {videos_dir}, e.g. {missing[0]}; "
                "render them first (render_protocol, which `magicme generate --protocol` runs)"
            )
        return entries


def read_protocol(path: Path) -> Protocol:
    data = read_config_file(path)
    unknown = sorted(set(data) - {"identities", "prompts", "seeds", "generation"})
    if unknown or not data.get("identities") or not data.get("prompts"):
        raise ValueError(f"{path}: a protocol needs `identities` and `prompts` (and may have `seeds`, `generation`)")
    identities = {
        name: from_mapping(ProtocolIdentity, values, f"{path} [identities.{name}]")
        for name, values in data["identities"].items()
    }
    generation = data.get("generation") or {}
    from_mapping(GenerationSettings, generation, f"{path} [generation]")  # typos fail now, not mid-run
    return Protocol(identities, list(data["prompts"]), list(data.get("seeds") or [0]), generation)


def render_protocol(model: ModelSettings, protocol: Protocol, output_dir: Path) -> list[Path]:
    """Render every job once, loading the model once per process; videos already there are kept.

    Under `accelerate launch` (one process per GPU) or `torchrun` (CPU processes) the jobs
    are split between the processes, all writing into `output_dir`; a single process renders
    them in turn.
    """
    import torch
    from accelerate import PartialState

    from magicme.io.sidecar import save_with_sidecar
    from magicme.models.loading import load_pipeline
    from magicme.t2v.generate import generate

    state = PartialState(cpu=model.device == "cpu" or not torch.cuda.is_available())
    if state.num_processes > 1 and model.device == "auto":
        model = dataclasses.replace(model, device=str(state.device))
    identities = [f"{name}={who.file}" for name, who in protocol.identities.items()]
    pipe = None
    videos = []
    with state.split_between_processes(protocol.jobs()) as jobs:
        for job in tqdm(jobs, desc="protocol videos"):
            video = output_dir / job.video_name
            videos.append(video)
            if video.is_file():
                log.info("%s exists, skipping", video.name)
                continue
            pipe = pipe or load_pipeline(dataclasses.replace(model, identities=[*model.identities, *identities]))
            values = {**protocol.generation, "prompt": job.prompt, "seed": job.seed}
            settings = from_mapping(GenerationSettings, values, "protocol")
            started = time.perf_counter()
            frames = generate(pipe, settings)
            sections = {"model": model, "generation": settings}
            save_with_sidecar(frames, video, settings.fps, sections, started, process=state.process_index)
    state.wait_for_everyone()
    return videos
