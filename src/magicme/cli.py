"""The `magicme` command line: options come from the settings dataclasses in `config`."""

import argparse
import dataclasses
import errno
import logging
import os
import re
import secrets
import sys
import tempfile
import traceback
import typing
from importlib.metadata import version
from pathlib import Path
from typing import Any

from magicme import registry
from magicme.errors import SettingError
from magicme.models.presets import PRESETS, apply_preset
from magicme.settings import (
    EditSettings,
    EvalSettings,
    FaceSettings,
    GenerationSettings,
    ModelSettings,
    TrainingSettings,
    UpscaleSettings,
    read_config_file,
    settings_from_record,
)

COMMAND_SECTIONS: dict[str, dict[str, type]] = {
    "generate": {"model": ModelSettings, "generation": GenerationSettings},
    "train": {"training": TrainingSettings},
    "refine-face": {"model": ModelSettings, "refine_face": FaceSettings},
    "upscale": {"model": ModelSettings, "upscale": UpscaleSettings},
    "edit": {"model": ModelSettings, "edit": EditSettings},
    "eval": {"evaluation": EvalSettings},
}
SETTINGS_CLASSES = {cls for sections in COMMAND_SECTIONS.values() for cls in sections.values()}
VIDEO_COMMANDS = {"refine-face": "face", "upscale": "upscaled", "edit": "edited"}  # command -> output suffix
POSITIONAL = {"photos"}
PRESET_HELP = (
    "few-step distilled motion, much faster than the 25-step default; it sets the motion adapter (and LoRA), "
    "sampler, steps and guidance that the options and --config leave unset: "
    + "; ".join(f"{name}: {preset.summary}" for name, preset in PRESETS.items())
)
RANDOM_SEED = -1
GENERATE_EXAMPLES = """\
examples:
  # a learned identity on real weights (fp16 on a GPU)
  magicme generate --identity alice.safetensors --prompt "a photo of <alice> woman on the beach" -o beach.mp4

  # a community checkpoint file, the reference's motion module and a zoom-in motion LoRA
  magicme generate --base-model realisticVisionV60.safetensors --motion-adapter mm_sd_v15_v2.ckpt \\
      --motion-lora guoyww/animatediff-motion-lora-zoom-in --identity alice=embeddings/alice.pt \\
      --prompt "close up photo of <alice> woman smiling" --scheduler dpmpp-2m-karras --guidance-scale 8

  # prompt travel: embeddings interpolate between keyframes
  magicme generate --identity alice.safetensors --prompt "0: <alice> woman walking | 8: <alice> woman running"

  # reproduce a video from its sidecar, changing only the seed
  magicme generate --config beach.json --seed 7 -o beach-seed7.mp4

  # every prompt x seed x identity of a benchmark protocol, then score them
  magicme generate --protocol protocol.yaml --output-dir results/
  magicme eval --protocol protocol.yaml --videos-dir results/ --plot
"""
EVAL_EXAMPLES = """\
examples:
  magicme eval beach.mp4 --references photos/alice --prompt "a photo of <alice> woman on the beach" --class-word woman
  magicme eval --manifest videos.yaml          # a list of {video, prompt, references, class_word}
  magicme eval --protocol protocol.yaml --videos-dir results/ --plot --output results/eval.json
"""
TRAIN_EXAMPLES = """\
examples:
  # learn <alice> from a folder of photos (GroundingDINO + SAM masks, the reference's recipe)
  magicme train photos/alice --name alice --class-word woman

  # offline masks for people (OpenCV face detection + GrabCut), then check runs/alice/masks.png
  magicme train photos/alice --name alice --class-word woman --masks offline

  # continue after Ctrl-C or a crash, from the last checkpoint
  magicme train photos/alice --name alice --class-word woman --resume
"""
STAGE_EXAMPLES = """\
examples:
  magicme refine-face clip.mp4 --identity alice.safetensors --prompt "close up photo of <alice> woman, detailed face"
  magicme upscale clip-face.mp4 --identity alice.safetensors --prompt "a photo of <alice> woman on the beach"
  magicme edit dance.mp4 --identity alice.safetensors --prompt "a photo of <alice> woman dancing" --strength 0.6
"""
CONVERT_EXAMPLES = """\
examples:
  magicme convert alice.pt alice.safetensors                  # A1111/ComfyUI -> magicme
  magicme convert learned_embeds.bin cat.pt                   # sd-concepts (diffusers) -> A1111/ComfyUI
  magicme convert alice.safetensors alice.bin --layout diffusers
  magicme convert Alice=alice.pt alice.safetensors --class-word woman
"""
RUN_EXAMPLE = """\
example config (YAML; every section but model/output_dir is a stage, skipped when absent;
sections are named as in sidecars, so a sidecar's section can be pasted in):
  output_dir: runs/alice-beach
  model: {base_model: stable-diffusion-v1-5/stable-diffusion-v1-5}
  training: {photos: photos/alice, name: alice, class_word: woman}
  generation: {prompt: "a photo of <alice> woman walking on the beach"}
  refine_face: {prompt: "close up photo of <alice> woman, detailed face"}
  upscale: {prompt: "a photo of <alice> woman walking on the beach"}
"""
STUDIO_EXAMPLES = """\
examples:
  magicme studio                                   # http://127.0.0.1:7860, workspace ./studio
  magicme studio --workspace ~/magicme --port 8000
  # on a GPU server: keep it on 127.0.0.1 and forward the port from your machine
  ssh -L 7860:127.0.0.1:7860 gpu-server   # then open http://127.0.0.1:7860 locally
  magicme studio --host 0.0.0.0 --auth alice:a-long-password   # reachable by others: always with --auth
"""
BATCH_EXAMPLE = """\
example manifest (YAML): identities x prompts x seeds, each clip a chain of the stages named
  output_dir: batch/beach
  model: {base_model: stable-diffusion-v1-5/stable-diffusion-v1-5}
  identities:
    alice: {photos: photos/alice, class_word: woman}   # learned first
    bob: {file: identities/bob.safetensors, references: photos/bob}
  prompts: ["a photo of {identity} on the beach", "a photo of {identity} in the snow"]
  seeds: [0, 1]
  training: {steps: 300}
  refine_face: {}            # its prompt defaults to "close up photo of a {identity}"
  evaluation: {face_model: dlib}
examples:
  magicme batch beach.yaml                 # in this process
  magicme batch beach.yaml --workers 2     # two worker processes sharing one queue
  torchrun --nproc-per-node 4 -m magicme batch beach.yaml    # one worker per GPU
"""
COMMANDS = {
    "generate": (
        "render a video of learned identities from a prompt (T2V VCD)",
        "Render a video with SD-1.5 + AnimateDiff started from VCD's 3D Gaussian noise prior.",
        GENERATE_EXAMPLES,
    ),
    "train": (
        "learn an identity from a few photos (VCD's ID module)",
        "Learn K identity tokens from photos with prompt-to-segmentation masks and a masked loss.",
        TRAIN_EXAMPLES,
    ),
    "refine-face": (
        "sharpen the face of a video with its identity (Face VCD)",
        "Detect the face through the clip, re-denoise it large as video with the identity prompt, paste it back.",
        STAGE_EXAMPLES,
    ),
    "upscale": (
        "upscale a video and refine it tile by tile (Tiled VCD)",
        "Upscale, then denoise as video tile by tile at low strength with the identity prompt.",
        STAGE_EXAMPLES,
    ),
    "edit": (
        "put an identity into an existing video (SDEdit)",
        "Re-noise an existing video and denoise it with the identity prompt, 16 frames at a time.",
        STAGE_EXAMPLES,
    ),
    "eval": (
        "score videos: face similarity, CLIP-I, DINO, CLIP-T, temporal consistency, motion",
        "Measure what the paper measures, plus face similarity per frame and how much the video moves.",
        EVAL_EXAMPLES,
    ),
    "run": (
        "photos to finished video in one command, resumable (train, generate, refine-face, upscale)",
        "Run the stages a config names, skipping those already done with the same settings and input.",
        RUN_EXAMPLE,
    ),
    "batch": (
        "many identities x prompts x seeds from a manifest, resumable, on one or several workers",
        "Expand a manifest into training and clip jobs and run them; a rerun skips finished work.",
        BATCH_EXAMPLE,
    ),
    "convert": (
        "convert an identity file between the layouts of magicme, A1111/ComfyUI and diffusers",
        "Read an identity file in any layout magicme knows and write it in the layout OUTPUT's suffix names.",
        CONVERT_EXAMPLES,
    ),
    "studio": (
        "the whole workflow in a web page: photos, training, videos, refinement (needs magicme[studio])",
        "Serve magicme studio, a local web app on a workspace folder; it binds 127.0.0.1 unless told otherwise.",
        STUDIO_EXAMPLES,
    ),
}


def flags() -> dict[str, str]:
    """Every setting's name -> its option: `num_frames` -> `--num-frames`, `identities` -> `--identity`,
    `photos` -> PHOTOS (a positional argument)."""
    hints = {name: kind for cls in SETTINGS_CLASSES for name, kind in typing.get_type_hints(cls).items()}
    names = {name: list_option_name(name) if kind == list[str] else option_name(name) for name, kind in hints.items()}
    return names | {name: name.upper() for name in POSITIONAL}


def as_options(error: Exception) -> str:
    """A library error, which names settings as `name`, in the words of the command line."""
    names = flags()
    if isinstance(error, SettingError):
        return f"{names.get(error.setting, error.setting)}: {as_options(ValueError(error.problem))}"
    return re.sub(r"`([a-z_]+)`", lambda match: names.get(match.group(1), match.group(0)), str(error))


def option_name(name: str) -> str:
    """`num_frames` -> `--num-frames`; list fields take one value per use: `identities` -> `--identity`."""
    return "--" + name.replace("_", "-")


def list_option_name(name: str) -> str:
    singular = name[:-3] + "y" if name.endswith("ies") else name.removesuffix("s")
    return option_name(singular)


def add_settings_options(parser: argparse.ArgumentParser, section: str, cls: type) -> None:
    """One option per dataclass field; unset options stay absent so config files can fill them."""
    group = parser.add_argument_group(f"{section} settings")
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        default = spec.default if spec.default is not dataclasses.MISSING else "none"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": f"{spec.metadata['help']} (default: {default})"}
        kind = hints[spec.name]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind == list[str]:
            kwargs.update(action="append", metavar=list_option_name(spec.name)[2:].upper(), help=spec.metadata["help"])
        else:
            kwargs["type"] = next(t for t in typing.get_args(kind) or (kind,) if t is not type(None))
            kwargs["choices"] = spec.metadata["choices"]
            kwargs["metavar"] = None if kwargs["choices"] else spec.name.upper()
        dest = f"{section}:{spec.name}"
        if spec.name in POSITIONAL:
            parser.add_argument(dest, nargs="?", **kwargs)
        else:
            flag = list_option_name(spec.name) if kind == list[str] else option_name(spec.name)
            group.add_argument(flag, dest=dest, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magicme", description="Identity-specific video generation (Video Custom Diffusion, Magic-Me)."
    )
    parser.add_argument("--version", action="version", version=f"magicme {version('magicme')}")
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback with an error (also: MAGICME_DEBUG=1)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command, (summary, description, epilog) in COMMANDS.items():
        sub = commands.add_parser(
            command,
            help=summary,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if command == "run":
            sub.add_argument("config", type=Path, help="the chain's YAML/JSON config")
            continue
        if command == "convert":
            add_convert_arguments(sub)
            continue
        if command == "batch":
            add_batch_arguments(sub)
            continue
        if command == "studio":
            add_studio_arguments(sub)
            continue
        if command in VIDEO_COMMANDS:
            sub.add_argument("input", type=Path, help="the video: .mp4, .gif or a folder of PNG frames")
        if command == "eval":
            sub.add_argument("videos", type=Path, nargs="*", help="videos to score against --references")
            sub.add_argument("--manifest", type=Path, help="YAML/JSON list of {video, prompt, references, class_word}")
        if command in ("eval", "generate"):
            sub.add_argument("--protocol", type=Path, help="a benchmark protocol (prompts x seeds x identities)")
            directory = "--videos-dir" if command == "eval" else "--output-dir"
            sub.add_argument(directory, type=Path, default=Path("outputs/protocol"), help="the protocol's videos")
        if command not in ("train", "eval"):
            sub.add_argument("-o", "--output", type=Path, help="video path: .mp4, .gif, or a folder for PNG frames")
        sub.add_argument("--config", type=Path, help="JSON/YAML settings (a sidecar works); options override it")
        if "model" in COMMAND_SECTIONS[command]:
            sub.add_argument("--preset", choices=sorted(PRESETS), help=PRESET_HELP)
        for section, cls in COMMAND_SECTIONS[command].items():
            add_settings_options(sub, section, cls)
    for name, command in registry.commands().items():  # commands that plug-ins add, e.g. the world's `demo`
        command.add_arguments(commands.add_parser(name, help=command.help, description=command.help))
    return parser


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given, by section: the config file's, then the options on the command line, then
    a speed preset's values for what neither sets."""
    record = read_config_file(args.config) if args.config else {}
    preset = record.pop("preset", None)
    for key, value in vars(args).items():
        section, _, name = key.partition(":")
        if name:
            record.setdefault(section, {})[name] = value
    return apply_preset(record, getattr(args, "preset", None) or preset, COMMAND_SECTIONS[args.command])


def collect_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the config file, then the options given on the command line; `--seed -1` is a
    random seed, printed here and recorded in the sidecar like any other."""
    sections = settings_from_record(given_settings(args), COMMAND_SECTIONS[args.command], str(args.config or "options"))
    for name, settings in sections.items():
        if getattr(settings, "seed", None) == RANDOM_SEED:
            sections[name] = dataclasses.replace(settings, seed=secrets.randbelow(2**31))
            print(f"seed: {sections[name].seed} (random)")
    return sections


def default_output(generation: GenerationSettings) -> Path:
    words = re.sub(r"[^a-z0-9]+", "-", generation.prompt.lower()).strip("-")[:48].strip("-")
    return Path("outputs") / f"{words or 'video'}-seed{generation.seed}.mp4"


def run_generate(args: argparse.Namespace) -> None:
    from magicme.t2v.generate import render

    settings = collect_settings(args)
    if args.protocol:
        from magicme.eval.protocol import read_protocol, render_protocol

        protocol = read_protocol(args.protocol).with_generation(given_settings(args).get("generation", {}))
        videos = render_protocol(settings["model"], protocol, args.output_dir)
        print(f"{len(videos)} videos in {args.output_dir}")
        return
    output = args.output or default_output(settings["generation"])
    print(f"video: {render(settings['model'], settings['generation'], output)}")


def run_train(args: argparse.Namespace) -> None:
    from magicme.identity.train import train_identity

    settings = collect_settings(args)["training"]
    identity = train_identity(settings)
    prompt = f"a photo of <{settings.name}> {settings.class_word}"
    print(f"identity: {identity}\nuse it: magicme generate --identity {identity} --prompt '{prompt} ...'")


def run_stage(args: argparse.Namespace) -> None:
    from magicme.v2v.jobs import edit_video, refine_face_video, upscale_video

    settings = collect_settings(args)
    job = {"refine-face": refine_face_video, "upscale": upscale_video, "edit": edit_video}[args.command]
    output = args.output or args.input.with_name(f"{args.input.stem}-{VIDEO_COMMANDS[args.command]}.mp4")
    stage = next(value for key, value in settings.items() if key != "model")
    print(f"video: {job(settings['model'], stage, args.input, output)}")


def run_eval(args: argparse.Namespace) -> None:
    from magicme.eval.evaluate import Entry, evaluate_entries, format_table

    settings = collect_settings(args)["evaluation"]
    if args.protocol:
        from magicme.eval.protocol import read_protocol

        entries = read_protocol(args.protocol).entries(args.videos_dir)
    elif args.manifest:
        entries = [
            Entry(Path(e["video"]), e["prompt"], Path(e["references"]), e.get("class_word"))
            for e in read_list(args.manifest)
        ]
    elif args.videos and settings.references and settings.prompt:
        references = Path(settings.references)
        entries = [Entry(video, settings.prompt, references, settings.class_word) for video in args.videos]
    else:
        raise ValueError("give VIDEOS with --references and --prompt, or --manifest, or --protocol")
    results = evaluate_entries(entries, settings)
    print(format_table(results))
    print(f"results: {settings.output}")


def read_list(path: Path) -> list[dict]:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and {"video", "prompt", "references"} <= set(e) for e in entries
    ):
        raise ValueError(f"{path}: expected a list of {{video, prompt, references, class_word}} entries")
    return entries


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="the identity file: PATH or NAME=PATH, in any layout magicme reads")
    parser.add_argument("output", type=Path, help="where to write it: .safetensors, .pt or .bin")
    parser.add_argument(
        "--layout",
        choices=("magicme", "a1111", "diffusers"),
        help="the layout to write (default: magicme for .safetensors, a1111 for .pt, diffusers for .bin)",
    )
    parser.add_argument("--class-word", help="the class word to record (magicme's layout keeps it)")


def run_convert(args: argparse.Namespace) -> None:
    from magicme.identity.files import convert_identity

    print(f"identity: {convert_identity(args.source, args.output, args.layout, args.class_word)}")


def add_studio_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--workspace", type=Path, default=Path("studio"), help="folder for identities and renders")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="ask for this login (use it whenever --host is public)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")


def run_studio(args: argparse.Namespace) -> None:
    from magicme.studio import prepare_environment

    prepare_environment(args.workspace)
    try:
        from magicme.studio.app import serve
    except ImportError as error:
        raise ValueError(f"the studio needs {error.name or 'gradio'}: pip install 'magicme[studio]'") from None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.auth:
        print(
            f"magicme: warning: the studio on {args.host} is open to anyone who reaches it; add --auth", file=sys.stderr
        )
    serve(args.workspace, args.host, args.port, args.auth, args.share)


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="the batch's YAML/JSON manifest")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes on this machine, sharing one queue (default: 1)"
    )
    parser.add_argument("--worker", type=float, help=argparse.SUPPRESS)  # a started worker: the batch's start time
    ray = parser.add_argument_group("Ray (--executor ray; pip install 'magicme[ray]')")
    ray.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: this process or --workers processes sharing the output folder (also each torchrun rank); "
        "ray: one Ray task per job (default: local)",
    )
    ray.add_argument(
        "--address",
        help="the Ray cluster to join (e.g. auto, ray://HOST:10001; default: RAY_ADDRESS, else a local "
        "instance with --workers x --cpus-per-job CPUs)",
    )
    ray.add_argument("--cpus-per-job", type=int, default=1, help="CPU threads each job asks for (default: 1)")
    ray.add_argument(
        "--gpus-per-job", type=float, help="GPUs each job asks for (default: 1 where the cluster has GPUs, else 0)"
    )
    ray.add_argument("--retries", type=int, default=3, help="reruns of a job whose Ray worker died (default: 3)")


def run_batch_command(args: argparse.Namespace) -> None:
    from magicme.batch.ray_executor import RaySettings
    from magicme.batch.runner import run_batch

    if args.workers < 1 or args.cpus_per_job < 1 or args.retries < 0:
        raise ValueError("--workers and --cpus-per-job must be 1 or more, and --retries 0 or more")
    if args.worker is not None:
        run_batch(args.manifest, started=args.worker, worker_only=True)
        return
    ray = None
    if args.executor == "ray":
        ray = RaySettings(args.address, args.workers, args.cpus_per_job, args.gpus_per_job, args.retries)
    elif args.address or args.gpus_per_job is not None:
        raise ValueError("--address and --gpus-per-job are for --executor ray")
    output = run_batch(args.manifest, args.workers, ray=ray)
    print(f"batch: every job done; status: {output / 'report.json'}")


def run_chain_command(args: argparse.Namespace) -> None:
    from magicme.chain import run_chain

    print(f"video: {run_chain(read_config_file(args.config), str(args.config))}")


FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def describe(error: Exception) -> str:
    """One line for the user: our errors say what to do; the system's get the fix added."""
    if isinstance(error, OSError) and error.errno in FULL_DISK:
        where = f" writing {error.filename}" if error.filename else ""
        text = f"the disk is full{where}; free some space and run it again (finished files are kept)"
    elif isinstance(error, OSError) and error.strerror and error.filename:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = as_options(error)
    return " ".join(text.split())


def report_crash() -> Path:
    """Write the traceback of an unexpected error to a file; the terminal gets one line."""
    with tempfile.NamedTemporaryFile("w", prefix="magicme-traceback-", suffix=".txt", delete=False) as handle:
        handle.write(traceback.format_exc())
    return Path(handle.name)


def main(argv: list[str] | None = None) -> int:
    """Run a command; exit 2 with one line on bad input, 1 on an unexpected error, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("MAGICME_DEBUG", "") not in ("", "0")
    logging.basicConfig(level=logging.INFO, format="magicme: %(message)s")
    commands = {"generate": run_generate, "train": run_train, "eval": run_eval, "run": run_chain_command}
    commands |= {"convert": run_convert, "studio": run_studio, "batch": run_batch_command}
    commands |= dict.fromkeys(VIDEO_COMMANDS, run_stage)
    commands |= {name: command.run for name, command in registry.commands().items()}
    try:
        commands[args.command](args)
    except (ValueError, OSError) as error:  # bad input or a system fault: the message says what to do
        if debug:
            traceback.print_exc()
        print(f"magicme: error: {describe(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("magicme: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: one line here, the whole traceback in a file to report
        if debug:
            traceback.print_exc()
        line = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        print(f"magicme: internal error: {line}; full traceback in {report_crash()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
