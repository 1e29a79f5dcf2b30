"""What binding two identities to their regions costs in T2V, against the same clip with the shared
prompt (no processor) and against stock diffusers' AnimateDiffPipeline call, in the same run.

    python benchmarks/regions.py --size cpu    # SD-1.5-sized random weights, 8 frames, 128 px, 2 steps
    python benchmarks/regions.py --size gpu    # 16 frames, 512 px, 25 steps, fp16 on CUDA

Two random 4-token identities share the prompt "a photo of <alice> woman and <bob> man on
the beach". "bound" is magicme's default for such a prompt (side by side, each half reading
its own prompt); "shared" is `--layout shared`. Each variant runs once to
warm up, then `repeats` times alternating with the others; medians of the whole call and of
one UNet step. Writes benchmarks/results-regions-SIZE.json (or --output).
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
from record import write_record
from run import SIZES, UNetTimer, build_components, build_video_pipeline, peak_memory_gb, reset_peak, timed

from magicme.identity.files import Identity, install_identities
from magicme.settings import GenerationSettings
from magicme.t2v.generate import generate

HERE = Path(__file__).resolve().parent
PROMPT = "a photo of <alice> woman and <bob> man on the beach"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    size, started = SIZES[args.size], time.perf_counter()
    pipe = build_video_pipeline(build_components(args.size), size)
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    generator = torch.Generator().manual_seed(0)
    install_identities(pipe, [Identity(name, torch.randn(4, width, generator=generator)) for name in ("alice", "bob")])
    settings = {"prompt": PROMPT, "num_frames": size.frames, "height": size.pixels, "width": size.pixels}
    settings["num_inference_steps"] = size.steps

    def stock() -> torch.Tensor:
        kwargs = {"num_frames": size.frames, "height": size.pixels, "width": size.pixels, "output_type": "pt"}
        call = pipe(PROMPT, num_inference_steps=size.steps, generator=torch.Generator().manual_seed(0), **kwargs)
        return call.frames[0]

    variants = {
        "stock diffusers": stock,
        "shared prompt": lambda: generate(pipe, GenerationSettings(**settings, layout="shared")),
        "bound to regions": lambda: generate(pipe, GenerationSettings(**settings)),
    }
    timer = UNetTimer(pipe.unet)
    for run in variants.values():
        run()  # warm-up
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    reset_peak(size.device)
    for _ in range(size.repeats):
        for name, run in variants.items():
            timer.seconds, timer.calls = 0.0, 0
            seconds, _ = timed(run, 1, warmup=False)
            runs[name].append((seconds, timer.seconds / timer.calls))
    results = {
        name: {
            "seconds": statistics.median(s for s, _ in values),
            "unet_seconds_per_step": statistics.median(u for _, u in values),
        }
        for name, values in runs.items()
    }
    for result in results.values():
        result["ratio_to_stock"] = result["seconds"] / results["stock diffusers"]["seconds"]
    bound, shared = results["bound to regions"], results["shared prompt"]
    per_step = bound["unet_seconds_per_step"] / shared["unet_seconds_per_step"]
    output = args.output or HERE / f"results-regions-{args.size}.json"
    memory = {"peak_memory_gb": peak_memory_gb(size.device)} if size.device == "cuda" else {}  # CPU: unmeasured
    minutes = write_record(
        output, started, size=args.size, variants=results, bound_per_step_ratio_to_shared=per_step, **memory
    )
    print("| variant | seconds per clip | UNet seconds per step | ratio to stock |\n|---|---|---|---|")
    for name, result in results.items():
        cells = (result["seconds"], result["unet_seconds_per_step"], result["ratio_to_stock"])
        print(f"| {name} | {cells[0]:.2f} | {cells[1]:.3f} | {cells[2]:.2f} |")
    print(f"\nbound / shared per UNet step: {per_step:.3f}; {minutes:.1f} min")


if __name__ == "__main__":
    main()
