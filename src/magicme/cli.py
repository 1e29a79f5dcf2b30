"""The `magicme` command line: options come from the settings dataclasses in `config`."""

import argparse
import dataclasses
import re
import sys
import typing
from pathlib import Path
from typing import Any

from magicme.config import GenerationSettings, ModelSettings, read_config_file

SECTIONS = {"model": ModelSettings, "generation": GenerationSettings}
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
"""


def _option_name(name: str) -> str:
    return "--identity" if name == "identities" else "--" + name.replace("_", "-")


def add_settings_options(parser: argparse.ArgumentParser, section: str, cls: type) -> None:
    """One option per dataclass field; unset options stay absent so config files can fill them."""
    group = parser.add_argument_group(f"{section} settings")
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        default = spec.default if spec.default is not dataclasses.MISSING else "none"
        kwargs: dict[str, Any] = {
            "dest": f"{section}:{spec.name}",
            "default": argparse.SUPPRESS,
            "help": f"{spec.metadata['help']} (default: {default})",
        }
        kind = hints[spec.name]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind == list[str]:
            kwargs.update(action="append", metavar="[NAME=]PATH", help=spec.metadata["help"] + " (repeatable)")
        else:
            kwargs["type"] = next(t for t in typing.get_args(kind) or (kind,) if t is not type(None))
            kwargs["choices"] = spec.metadata["choices"]
        group.add_argument(_option_name(spec.name), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magicme", description="Identity-specific video generation (Video Custom Diffusion, Magic-Me)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser(
        "generate",
        help="render a video of learned identities from a prompt (T2V VCD)",
        description="Render a video with SD-1.5 + AnimateDiff started from VCD's 3D Gaussian noise prior.",
        epilog=GENERATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    generate.add_argument("-o", "--output", type=Path, help="video path: .mp4, .gif, or a folder for PNG frames")
    generate.add_argument("--config", type=Path, help="JSON/YAML settings (a sidecar works); options override it")
    for section, cls in SECTIONS.items():
        add_settings_options(generate, section, cls)
    demo = commands.add_parser("demo", help="render the built-in demo on a tiny model, offline, on a CPU")
    demo.add_argument("--output-dir", type=Path, default=Path("outputs/demo"), help="where the demo writes")
    return parser


def collect_settings(args: argparse.Namespace) -> tuple[ModelSettings, GenerationSettings]:
    """Defaults, then the config file, then the options given on the command line."""
    from magicme.render import settings_from_record

    record = read_config_file(args.config) if args.config else {}
    record.pop("record", None)
    for key, value in vars(args).items():
        section, _, name = key.partition(":")
        if name:
            record.setdefault(section, {})[name] = value
    return settings_from_record(record, str(args.config or "options"))


def default_output(generation: GenerationSettings) -> Path:
    words = re.sub(r"[^a-z0-9]+", "-", generation.prompt.lower()).strip("-")[:48].strip("-")
    return Path("outputs") / f"{words or 'video'}-seed{generation.seed}.mp4"


def run_generate(args: argparse.Namespace) -> None:
    from magicme.render import render

    model, generation = collect_settings(args)
    output = render(model, generation, args.output or default_output(generation))
    print(f"video: {output}")


def run_demo_command(args: argparse.Namespace) -> None:
    from magicme.demo import NOTICE, run_demo

    output = run_demo(args.output_dir)
    print(f"video: {output}\n{NOTICE}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"generate": run_generate, "demo": run_demo_command}[args.command](args)
    except (ValueError, FileNotFoundError) as error:  # our errors say what to do; no traceback needed
        print(f"magicme: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
