import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from magicme import chain
from magicme.cli import main
from magicme.io.video import read_video, save_video, to_uint8
from magicme.v2v.faces import crop_region, fill_missing, link_tracks, opencv_face_detector
from magicme.v2v.windows import denoise_in_windows


def astronaut_clip(astronaut, size: int, folder: Path) -> Path:
    """6 frames of the astronaut drifting right: a clip with a face in it."""
    frames = []
    for t in range(6):
        crop = astronaut.image.crop((6 * t, 0, 500 + 6 * t, 500)).resize((size, size))
        frames.append(torch.from_numpy(np.asarray(crop)).permute(2, 0, 1).float() / 255)
    return save_video(torch.stack(frames), folder / f"astronaut-{size}.mp4")


@pytest.fixture(scope="module")
def face_clip(astronaut, tmp_path_factory) -> Path:
    return astronaut_clip(astronaut, 320, tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def small_clip(astronaut, tmp_path_factory) -> Path:
    return astronaut_clip(astronaut, 96, tmp_path_factory.mktemp("clips"))


@pytest.fixture
def model_args(tiny_model, identity_file) -> list[str]:
    base, motion = tiny_model
    return ["--base-model", str(base), "--motion-adapter", str(motion), "--identity", str(identity_file)]


FAST = ["--num-inference-steps", "2", "--prompt", "a photo of <alice> woman"]


def test_refine_face_keeps_size_and_changes_only_the_face(face_clip: Path, model_args, tmp_path: Path) -> None:
    output = tmp_path / "face.mp4"
    argv = ["refine-face", str(face_clip), *model_args, *FAST, "--guide-size", "64", "-o", str(output)]
    argv += ["--min-enlargement", "1"]  # a 64 px guide (for speed) would enlarge no face: refine it anyway
    assert main(argv) == 0
    before, after = read_video(face_clip), read_video(output)
    assert after.shape == before.shape == (6, 3, 320, 320)
    track = fill_missing(link_tracks([opencv_face_detector(frame) for frame in to_uint8(before)])[0])
    x, y, side = crop_region(track, 3.0, 320, 320)
    assert side < 320 * 0.8, "the region must leave part of the frame outside"
    difference = (after - before).abs().mean(dim=(0, 1))
    inside = torch.zeros(320, 320, dtype=torch.bool)
    inside[y : y + side, x : x + side] = True
    assert difference[~inside].mean() < 0.02, "outside the face region only mp4 re-encoding noise"
    assert difference[inside].mean() > 0.1, "the face region is re-denoised"
    assert json.loads((tmp_path / "face.json").read_text())["refine_face"]["crop_factor"] == 3.0


def test_upscale_doubles_the_size(small_clip: Path, model_args, tmp_path: Path) -> None:
    output = tmp_path / "big.mp4"
    argv = ["upscale", str(small_clip), *model_args, *FAST, "--num-inference-steps", "5", "--tile", "128"]
    argv += ["--overlap", "32", "-o", str(output)]
    assert main(argv) == 0
    assert read_video(output).shape == (6, 3, 192, 192)


def test_edit_keeps_every_frame(small_clip: Path, model_args, tmp_path: Path) -> None:
    output = tmp_path / "edited.gif"
    argv = ["edit", str(small_clip), *model_args, *FAST, "--window", "4", "--window-overlap", "2"]
    assert main([*argv, "--max-side", "64", "-o", str(output)]) == 0
    assert read_video(output).shape == (6, 3, 64, 64)


def test_windows_blend_back_to_the_input_with_an_identity_denoiser() -> None:
    frames = torch.rand(11, 3, 8, 8)
    sizes = []
    noise = torch.randn(1, 4, 11, 1, 1)
    parts = []
    blended = denoise_in_windows(frames, lambda w, n: sizes.append(w.shape[1]) or parts.append(n) or w, noise, 4, 1)
    assert torch.allclose(blended, frames, atol=1e-6) and set(sizes) == {4}
    assert torch.equal(parts[0], noise[:, :, :4]) and torch.equal(parts[-1], noise[:, :, 7:]), "the frames' noise"


@pytest.mark.parametrize("scheduler", ["ddim", "euler-ancestral"])
def test_tiles_denoised_in_batches_match_tiles_denoised_one_at_a_time(tiny_pipe, scheduler: str) -> None:
    """4 tiles in UNet batches of 3 (then 1) give what 4 calls give, ancestral sampling's draws included."""
    from magicme.settings import UpscaleSettings
    from magicme.v2v.denoiser import make_denoiser, noise_field_for
    from magicme.v2v.tiles import denoise_tiled

    settings = UpscaleSettings(prompt="a photo of <alice> woman", strength=0.5, num_inference_steps=4)
    settings.scheduler = scheduler
    denoise = make_denoiser(tiny_pipe, settings)
    frames = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    field = noise_field_for(tiny_pipe, settings).draw(4, 128, 128)
    batches = []
    hook = tiny_pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        one_by_one = denoise_tiled(frames, denoise, field, tile=64, overlap=16)
        batched = denoise_tiled(frames, denoise, field, tile=64, overlap=16, batch=3)
    finally:
        hook.remove()
    assert batches == [2] * 8 + [6, 6, 2, 2], "2 steps: 4 tiles x (cond, uncond), then 3 + 1 tiles"
    assert (one_by_one - frames).abs().mean() > 0.05, "the tiles were denoised"
    assert torch.allclose(batched, one_by_one, atol=1e-4)


def test_a_crop_batch_below_one_is_refused(small_clip: Path, model_args, tmp_path: Path, capsys) -> None:
    argv = ["upscale", str(small_clip), *model_args, *FAST, "--crop-batch", "0", "-o", str(tmp_path / "never.mp4")]
    assert main(argv) == 2
    assert "crop-batch" in capsys.readouterr().err.replace("_", "-")
    assert not (tmp_path / "never.mp4").exists()


def test_stage_without_prompt_is_a_clear_error(small_clip: Path, model_args, capsys) -> None:
    assert main(["upscale", str(small_clip), *model_args]) == 2
    assert "a prompt is needed" in capsys.readouterr().err
    assert main(["upscale", str(small_clip), *model_args, *FAST]) == 2  # 2 steps x strength 0.2 < 1 step
    assert (
        "--num-inference-steps: 2 steps at strength 0.2 leave no step to denoise; use 6 or more"
        in capsys.readouterr().err
    )


def chain_settings(tiny_model, astronaut_folder: Path, output_dir: Path) -> dict:
    base, motion = tiny_model
    return {
        "output_dir": str(output_dir),
        "model": {"base_model": str(base), "motion_adapter": str(motion)},
        "training": {"photos": str(astronaut_folder), "name": "astro", "class_word": "woman", "base_model": str(base)}
        | {"masks": "offline", "resolution": 64, "steps": 2, "batch_size": 1, "validation_every": 0},
        "generation": {"prompt": "a photo of <astro> woman on the beach", "num_frames": 4, "height": 64, "width": 64}
        | {"num_inference_steps": 2},
        "refine_face": {"prompt": "close up of <astro> woman", "num_inference_steps": 2, "guide_size": 64},
        "upscale": {"prompt": "<astro> woman", "num_inference_steps": 5, "tile": 96, "overlap": 16, "sharpen": 0.0},
    }


@pytest.fixture
def chain_config(tiny_model, astronaut_folder: Path, tmp_path: Path) -> Path:
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(chain_settings(tiny_model, astronaut_folder, tmp_path / "chain")))
    return path


@pytest.fixture(scope="module")
def uninterrupted_video(tiny_model, astronaut_folder: Path, tmp_path_factory) -> Path:
    """The final video of `chain_config`'s chain run once without interruption."""
    return chain.run_chain(chain_settings(tiny_model, astronaut_folder, tmp_path_factory.mktemp("straight")))


def test_chain_runs_every_stage_and_resumes_after_a_kill(chain_config: Path, monkeypatch, caplog) -> None:
    from magicme.v2v import jobs as stages

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    caplog.set_level(logging.INFO, logger="magicme")
    monkeypatch.setattr(stages, "upscale_video", killed)
    assert main(["run", str(chain_config)]) == 130
    output_dir = Path(yaml.safe_load(chain_config.read_text())["output_dir"])
    assert (output_dir / "generation.done").is_file() and not (output_dir / "upscale.done").exists()

    monkeypatch.undo()
    calls = []
    monkeypatch.setattr(chain, "fingerprint", lambda *a: calls.append(a[0]) or real_fingerprint(*a))
    caplog.clear()
    assert main(["run", str(chain_config)]) == 0
    for stage in ("training", "generation", "refine_face"):
        assert f"{stage}: done before with the same settings and input, skipping" in caplog.text
    assert "upscale: running" in caplog.text
    assert read_video(output_dir / "upscale.mp4").shape == (4, 3, 128, 128)
    assert read_video(output_dir / "generation.mp4").shape == (4, 3, 64, 64)


real_fingerprint = chain.fingerprint


def test_changed_settings_redo_their_stage_and_the_next(chain_config: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="magicme")
    assert main(["run", str(chain_config)]) == 0
    config = yaml.safe_load(chain_config.read_text())
    config["generation"]["seed"] = 1
    chain_config.write_text(yaml.safe_dump(config))
    caplog.clear()
    assert main(["run", str(chain_config)]) == 0
    assert "training: done before" in caplog.text
    for stage in ("generation", "refine_face", "upscale"):  # a new video flows through every later stage
        assert f"{stage}: running" in caplog.text


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"generation": {}, "edit": {}}, "not both"),
        ({"edit": {"prompt": "x"}}, "`edit` needs `input:`"),
        ({"upscale": {"prompt": "x"}}, "give `input:`"),
        ({"output_dir": "x"}, "names no stage"),
        ({"generation": {"prompt": "x"}, "sharpen": 1}, "unknown section(s) ['sharpen']"),
    ],
)
def test_chain_config_errors(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        chain.parse_chain(config, "c.yaml")


@pytest.mark.parametrize("strength", [0.4, 1.0])
def test_ddim_inversion_then_regeneration_is_exact_for_a_noise_free_model(strength: float) -> None:
    """With a model that predicts zero noise, DDIM is invertible: invert to the strength's
    timestep, then denoise from there with the same schedule, and the latents come back."""
    from types import SimpleNamespace

    from diffusers import DDIMScheduler

    from magicme.models.schedulers import make_scheduler
    from magicme.testing.tiny import build_tiny_model
    from magicme.v2v.denoiser import ddim_invert

    def unet(latents, timestep, encoder_hidden_states):
        return SimpleNamespace(sample=torch.zeros_like(latents))

    config = make_scheduler("ddim", build_tiny_model()[0].scheduler.config).config
    latents = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    noisy = ddim_invert(unet, latents, None, config, steps=25, strength=strength)
    assert not torch.allclose(noisy, latents)
    forward = DDIMScheduler.from_config(config, timestep_spacing="leading")
    forward.set_timesteps(25)
    for timestep in forward.timesteps[25 - int(25 * strength) :]:
        noisy = forward.step(torch.zeros_like(noisy), timestep, noisy).prev_sample
    assert torch.allclose(noisy, latents, atol=1e-3)


def test_edit_by_ddim_inversion(small_clip: Path, model_args, tmp_path: Path) -> None:
    output = tmp_path / "inverted.mp4"
    argv = ["edit", str(small_clip), *model_args, *FAST, "--method", "ddim-inversion", "--source-prompt", "a woman"]
    assert main([*argv, "--max-side", "64", "--num-inference-steps", "4", "-o", str(output)]) == 0
    assert read_video(output).shape == (6, 3, 64, 64)


def test_a_sidecars_sections_paste_into_a_chain_and_the_old_names_still_work(tmp_path: Path) -> None:
    import time

    from magicme.io.sidecar import save_with_sidecar
    from magicme.settings import GenerationSettings, ModelSettings

    sections = {"model": ModelSettings(), "generation": GenerationSettings(prompt="a cat", seed=3)}
    save_with_sidecar(torch.rand(2, 3, 16, 16), tmp_path / "clip.mp4", 8, sections, time.perf_counter())
    sidecar = json.loads((tmp_path / "clip.json").read_text())
    config = {"output_dir": str(tmp_path / "chain"), "model": sidecar["model"], "generation": sidecar["generation"]}
    stages = chain.parse_chain(config, "chain.yaml")[3]
    assert stages == {"generation": GenerationSettings(prompt="a cat", seed=3)}

    with pytest.warns(DeprecationWarning, match="the chain section `generate` is now `generation`"):
        assert list(chain.parse_chain({"generate": {"prompt": "x"}}, "old.yaml")[3]) == ["generation"]
    with pytest.raises(ValueError, match="keep only `generation`"):
        chain.parse_chain({"generate": {}, "generation": {}}, "both.yaml")


def test_kill_9_in_each_chain_stage_then_the_rerun_gives_the_uninterrupted_video(
    chain_config: Path, uninterrupted_video: Path
) -> None:
    """SIGKILL once inside each video stage, in turn: every rerun continues, and the final video is the
    one an uninterrupted chain makes, frame for frame."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    config = yaml.safe_load(chain_config.read_text())
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    delays = random.Random(0)
    for stage in ("generation", "refine_face", "upscale"):  # training: tests/test_hostile_inputs.py
        process = subprocess.Popen(
            [sys.executable, "-m", "magicme", "run", str(chain_config)], env=env, stderr=subprocess.PIPE, text=True
        )
        for line in process.stderr:
            if f"magicme: {stage}: running" in line:
                time.sleep(delays.uniform(0.0, 1.0))
                process.send_signal(signal.SIGKILL)
                break
        assert process.wait() == -signal.SIGKILL, f"the chain finished before {stage} could be killed"
    assert main(["run", str(chain_config)]) == 0
    assert torch.equal(read_video(Path(config["output_dir"]) / "upscale.mp4"), read_video(uninterrupted_video))
    assert not [path for path in Path(config["output_dir"]).rglob("*") if "partial" in path.name]


def test_a_full_disk_in_a_chain_stage_keeps_the_finished_stages(chain_config: Path, uninterrupted_video: Path) -> None:
    """The upscale stage cannot write its video (as on a full disk): one line, exit 2, the earlier
    stages kept; once there is room the rerun does only the upscale and gives the same video."""
    import os
    import subprocess
    import sys

    config = yaml.safe_load(chain_config.read_text())
    chain_config.write_text(yaml.safe_dump({key: value for key, value in config.items() if key != "upscale"}))
    assert main(["run", str(chain_config)]) == 0  # the stages before the upscale, done with room to spare
    chain_config.write_text(yaml.safe_dump(config))
    limit = uninterrupted_video.stat().st_size // 2  # the upscale stage writes no other file this large
    code = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as ENOSPC would
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from magicme.cli import main
sys.exit(main(["run", {str(chain_config)!r}]))
"""
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    errors = [line for line in result.stderr.splitlines() if line.startswith("magicme: error:")]
    assert result.returncode == 2 and len(errors) == 1 and "full" in errors[0], result.stderr[-2000:]
    output_dir = Path(config["output_dir"])
    assert (output_dir / "refine_face.done").is_file() and not (output_dir / "upscale.mp4").exists()
    assert not [path for path in output_dir.rglob("*") if "partial" in path.name]
    assert main(["run", str(chain_config)]) == 0
    assert torch.equal(read_video(output_dir / "upscale.mp4"), read_video(uninterrupted_video))


def test_a_stage_after_a_clip_with_freenoise_and_freeu_runs_as_on_a_fresh_pipeline(make_pipe, identity_file) -> None:
    """The chain shares one pipeline: T2V's FreeNoise windows and FreeU, set in the UNet's modules, must
    not carry into Tiled VCD (a 4-frame clip under 8-frame FreeNoise windows used to fail)."""
    from magicme.settings import UpscaleSettings
    from magicme.t2v.generate import generate
    from magicme.v2v.denoiser import make_denoiser, noise_field_for
    from magicme.v2v.tiles import denoise_tiled
    from tests.conftest import quick_settings

    used = make_pipe([str(identity_file)])
    features = {"num_frames": 12, "free_noise": True, "free_noise_context": 8, "free_noise_stride": 2, "freeu": True}
    generate(used, quick_settings(**features))
    settings = UpscaleSettings(prompt="a photo of <alice> woman", strength=0.5, num_inference_steps=2)
    frames = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tiles = []
    for pipe in (used, make_pipe([str(identity_file)])):
        field = noise_field_for(pipe, settings).draw(4, 64, 64)
        tiles.append(denoise_tiled(frames, make_denoiser(pipe, settings), field, tile=64, overlap=16))
    assert torch.equal(tiles[0], tiles[1])
