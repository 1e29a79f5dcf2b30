"""magicme against stock diffusers, as ratios measured in one run on the same weights and inputs.

    python benchmarks/run.py --size cpu      # 8 frames, 128 px, 2 steps, fp32: a few minutes on 2 cores
    python benchmarks/run.py --size gpu      # 16 frames, 512 px, 25 steps, fp16 on CUDA (the real size)
    python benchmarks/run.py --size tiny     # the tiny test model: checks the script, measures nothing useful

Weights are random but SD-1.5-sized (built from the configs magicme ships), which cost
exactly what real ones do. Results print as Markdown and are saved as JSON (--output).
"""

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from magicme.identity.train import IdentityTrainer, draw_batch
from magicme.models.loading import CONFIGS
from magicme.settings import FaceSettings, GenerationSettings, TrainingSettings, UpscaleSettings
from magicme.t2v.generate import generate
from magicme.t2v.noise_prior import sample_noise_prior
from magicme.testing.tiny import build_tiny_model
from magicme.v2v.denoiser import make_denoiser, noise_field_for
from magicme.v2v.faces import refine_faces
from magicme.v2v.tiles import tiled_vcd


@dataclass
class Size:
    frames: int
    pixels: int
    steps: int
    dtype: torch.dtype
    device: str
    repeats: int


SIZES = {
    "tiny": Size(frames=8, pixels=64, steps=2, dtype=torch.float32, device="cpu", repeats=2),
    "cpu": Size(frames=8, pixels=128, steps=2, dtype=torch.float32, device="cpu", repeats=3),
    "gpu": Size(frames=16, pixels=512, steps=25, dtype=torch.float16, device="cuda", repeats=3),
}


def build_components(size_name: str) -> dict:
    """SD-1.5 + AnimateDiff v2 at full size with random weights (or the tiny test model)."""
    torch.manual_seed(0)
    if size_name == "tiny":
        image_pipe, adapter = build_tiny_model()
        names = ("vae", "text_encoder", "tokenizer", "unet")
        return {name: image_pipe.components[name] for name in names} | {"motion_adapter": adapter}
    sd15 = CONFIGS / "sd15"
    return {
        "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(str(sd15 / "vae"))),
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(str(sd15 / "text_encoder"))),
        "tokenizer": CLIPTokenizer.from_pretrained(str(sd15 / "tokenizer")),
        "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(sd15 / "unet"))),
        "motion_adapter": MotionAdapter.from_config(MotionAdapter.load_config(str(CONFIGS / "motion_adapter_v15_v2"))),
    }


def build_video_pipeline(components: dict, size: Size) -> AnimateDiffPipeline:
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False)
    pipe = AnimateDiffPipeline(**components, scheduler=scheduler)  # the motion UNet is a copy of the 2D one
    pipe.to(size.device, size.dtype)
    pipe.vae.enable_slicing()
    pipe.set_progress_bar_config(disable=True)
    return pipe


class UNetTimer:
    """Wall time spent inside the UNet's forward calls: the per-step cost, free of set-up and decoding."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.seconds, self.calls, self._start = 0.0, 0, 0.0
        unet.register_forward_pre_hook(lambda *args: self._begin())
        unet.register_forward_hook(lambda *args: self._end())

    def _begin(self) -> None:
        synchronize()
        self._start = time.perf_counter()

    def _end(self) -> None:
        synchronize()
        self.seconds += time.perf_counter() - self._start
        self.calls += 1


def timed(function, repeats: int, warmup: bool = True) -> tuple[float, object]:
    """Median wall time of `repeats` calls (after one warm-up call if asked); returns (seconds, last result)."""
    result = function() if warmup else None
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        result = function()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_gb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def bench_t2v(pipe: AnimateDiffPipeline, size: Size) -> dict:
    """T2V VCD (3D prior) against stock AnimateDiff with i.i.d. noise: the same loop, the same weights."""
    settings = GenerationSettings(
        prompt="a photo of a woman walking on the beach",
        num_frames=size.frames,
        height=size.pixels,
        width=size.pixels,
        num_inference_steps=size.steps,
        gamma=0.1,
    )

    def stock():
        generator = torch.Generator().manual_seed(0)
        kwargs = {"num_frames": size.frames, "height": size.pixels, "width": size.pixels, "output_type": "pt"}
        return pipe(settings.prompt, num_inference_steps=size.steps, generator=generator, **kwargs).frames[0]

    reset_peak(size.device)
    timer = UNetTimer(pipe.unet)
    stock(), generate(pipe, settings)  # warm-up, then alternate so drift hits both alike
    runs: dict[str, list[tuple[float, float]]] = {"stock": [], "vcd": []}
    frames = None
    for _ in range(size.repeats):
        for name, run in (("stock", stock), ("vcd", lambda: generate(pipe, settings))):
            timer.seconds, timer.calls = 0.0, 0
            seconds, result = timed(run, 1, warmup=False)
            runs[name].append((seconds, timer.seconds / timer.calls))
            frames = result if name == "vcd" else frames
    total = {name: statistics.median(s for s, _ in values) for name, values in runs.items()}
    step = {name: statistics.median(u for _, u in values) for name, values in runs.items()}
    shape = (1, 4, size.frames, size.pixels // 8, size.pixels // 8)
    prior_seconds, _ = timed(lambda: sample_noise_prior(shape, 0.1, torch.Generator().manual_seed(0)), 5)
    return {
        "stock_seconds": total["stock"],
        "vcd_seconds": total["vcd"],
        "ratio": total["vcd"] / total["stock"],
        "stock_unet_seconds_per_step": step["stock"],
        "vcd_unet_seconds_per_step": step["vcd"],
        "per_step_ratio": step["vcd"] / step["stock"],
        "prior_draw_seconds": prior_seconds,
        "peak_memory_gb": peak_memory_gb(size.device),
        "frames": frames,
    }


def plain_textual_inversion_step(pipe, batch, optimizer, original_table, trained_ids) -> None:
    """diffusers' textual_inversion.py inner loop: the whole table trains, unmasked MSE, rows restored."""
    text_encoder, unet, vae = pipe.text_encoder, pipe.unet, pipe.vae
    device, dtype = vae.device, vae.dtype
    with torch.no_grad():
        latents = vae.encode(batch.pixels.to(device, dtype)).latent_dist.sample() * vae.config.scaling_factor
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, 1000, (latents.shape[0],), device=device)
    noisy = pipe.scheduler.add_noise(latents, noise, timesteps)
    ids = pipe.tokenizer(batch.captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    text = text_encoder(ids.input_ids.to(device))[0]
    prediction = unet(noisy, timesteps, text.to(dtype)).sample
    loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():  # the example restores every row but the new ones
        keep = torch.ones(len(original_table), dtype=torch.bool)
        keep[trained_ids] = False
        text_encoder.get_input_embeddings().weight[keep] = original_table[keep]


def bench_training(components: dict, size: Size) -> dict:
    """One magicme ID-training step against one plain textual-inversion step at the same size."""
    import copy

    import numpy as np
    from accelerate import Accelerator
    from diffusers import StableDiffusionPipeline
    from PIL import Image
    from torch.nn.utils import parametrize

    from magicme.identity.photos import Photo

    rng = np.random.default_rng(0)
    side = size.pixels
    images = [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(3)]
    masked = [
        (Photo(Path(f"{i}.png"), image, str(i)), np.ones((side, side), dtype=bool)) for i, image in enumerate(images)
    ]

    def trainer() -> IdentityTrainer:
        fresh = {
            "text_encoder": copy.deepcopy(components["text_encoder"]),
            "tokenizer": copy.deepcopy(components["tokenizer"]),
        }
        pipe = StableDiffusionPipeline(
            vae=components["vae"],
            unet=components["unet"],
            scheduler=DDIMScheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **fresh,
        )
        settings = TrainingSettings(photos=".", name="bench", class_word="woman", resolution=side, batch_size=1)
        return IdentityTrainer(settings, masked, Accelerator(cpu=size.device == "cpu"), pipe=pipe)

    ours = trainer()
    reset_peak(size.device)
    ours_seconds, _ = timed(ours.step, size.repeats)  # one warm-up step, then the median of `repeats`
    ours_memory = peak_memory_gb(size.device)

    plain = trainer()  # the same model and tokens, trained the way diffusers' example does
    table = plain.pipe.text_encoder.get_input_embeddings()
    parametrize.remove_parametrizations(table, "weight", leave_parametrized=True)
    table.weight.requires_grad_(True)
    original = table.weight.detach().clone()
    optimizer = torch.optim.AdamW([table.weight], lr=1e-3)
    batch = draw_batch(masked, plain.settings, plain.caption, torch.Generator().manual_seed(0))
    ids = plain.rows.token_ids.cpu()
    step = lambda: plain_textual_inversion_step(plain.pipe, batch, optimizer, original, ids)  # noqa: E731
    plain_seconds, _ = timed(step, size.repeats)
    return {
        "vcd_step_seconds": ours_seconds,
        "plain_ti_step_seconds": plain_seconds,
        "ratio": ours_seconds / plain_seconds,
        "peak_memory_gb": ours_memory,
    }


def bench_refinement(pipe: AnimateDiffPipeline, size: Size, frames: torch.Tensor, t2v_seconds: float) -> dict:
    """Face VCD (strength 0.8, guide = clip size) plus Tiled VCD (2x, tiles = clip size, strength 0.2)."""
    face_settings = FaceSettings("a close up photo of a woman", num_inference_steps=size.steps)
    face = make_denoiser(pipe, face_settings)
    steps_for_tiles = max(size.steps, 5)  # 0.2 x steps must leave one step at the CPU size
    tile_settings = UpscaleSettings("a photo of a woman", num_inference_steps=steps_for_tiles, sharpen=0.0)
    tile_settings = dataclasses.replace(tile_settings, tile=size.pixels, overlap=size.pixels // 8)
    tiles = make_denoiser(pipe, tile_settings)
    center = size.pixels // 2

    def face_vcd():
        box = (center - size.pixels // 8, center - size.pixels // 8, size.pixels // 4, size.pixels // 4)
        noise = noise_field_for(pipe, face_settings).draw
        return refine_faces(frames, face, noise, detector=lambda frame: [box], guide_size=size.pixels)

    def upscale():
        return tiled_vcd(frames, tiles, noise_field_for(pipe, tile_settings).draw, tile_settings)

    reset_peak(size.device)
    face_seconds, _ = timed(face_vcd, 1, warmup=False)  # the model is warm from the T2V runs
    tiled_seconds, _ = timed(upscale, 1, warmup=False)
    return {
        "face_seconds": face_seconds,
        "tiled_seconds": tiled_seconds,
        "ratio_to_t2v": (face_seconds + tiled_seconds) / t2v_seconds,
        "peak_memory_gb": peak_memory_gb(size.device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="cpu")
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON results (default: benchmarks/results-SIZE.json)"
    )
    args = parser.parse_args()
    size = SIZES[args.size]
    if size.device == "cuda" and not torch.cuda.is_available():
        sys.exit("the gpu size needs CUDA")
    started = time.perf_counter()
    progress(f"building {args.size} models")
    components = build_components(args.size)
    pipe = build_video_pipeline(components, size)
    progress("T2V VCD vs stock AnimateDiff")
    t2v = bench_t2v(pipe, size)
    progress("Face VCD + Tiled VCD")
    refinement = bench_refinement(pipe, size, t2v.pop("frames"), t2v["vcd_seconds"])
    del pipe, components["motion_adapter"]
    progress("ID training step vs plain textual inversion")
    training = bench_training(components, size)
    device = (
        torch.cuda.get_device_name()
        if size.device == "cuda"
        else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    results = {
        "size": args.size,
        "device": device,
        "date": time.strftime("%Y-%m-%d"),
        "versions": {name: version(name) for name in ("magicme", "torch", "diffusers", "transformers")},
        "command": f"python benchmarks/run.py --size {args.size}",
        "t2v": t2v,
        "refinement": refinement,
        "training": training,
        "seconds": time.perf_counter() - started,
    }
    output = args.output or Path(__file__).parent / f"results-{args.size}.json"
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
