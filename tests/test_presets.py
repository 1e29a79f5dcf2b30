"""Speed presets end to end on the tiny model, loading the published files' layouts (random weights):
AnimateDiff-Lightning's diffusers and ComfyUI single files, AnimateLCM's motion module and LoRA."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from magicme.chain import run_chain
from magicme.cli import main
from magicme.errors import SettingError
from magicme.identity.lora import save_kohya_lora
from magicme.io.video import read_video, to_uint8
from magicme.models import loading
from magicme.models.presets import PRESETS, apply_preset, with_preset
from magicme.settings import FaceSettings, GenerationSettings, ModelSettings, UpscaleSettings
from magicme.t2v.generate import generate
from tests.conftest import quick_settings, record_unet_calls
from tests.test_generation import original_motion_layout

LIGHTNING_4 = ("ByteDance/AnimateDiff-Lightning", "animatediff_lightning_4step_diffusers.safetensors", "main")
LCM_LORA = ("wangfuyun/AnimateLCM", "AnimateLCM_sd15_t2v_lora.safetensors", "main")
STAGES = ("generation", "refine_face", "upscale")


@pytest.fixture
def hub(tiny_model, unet_with_lora, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The hub's published files, with the tiny model's random weights in their layouts: `hf_hub_download`
    answers from here and records what was asked for. Single motion files are read with the tiny config."""
    from diffusers import MotionAdapter

    _, motion = tiny_model
    adapter = MotionAdapter.from_pretrained(motion)
    configs = tmp_path / "configs"
    shutil.copytree(motion, configs / "motion_adapter_v15_v2")  # the tiny stand-in for the shipped SD-1.5 config
    monkeypatch.setattr(loading, "CONFIGS", configs)
    published = {LIGHTNING_4: tmp_path / LIGHTNING_4[1], LCM_LORA: tmp_path / LCM_LORA[1]}
    save_file({key: value.contiguous() for key, value in adapter.state_dict().items()}, published[LIGHTNING_4])
    save_kohya_lora(unet_with_lora[1], published[LCM_LORA])  # kohya layout, as community LoRAs
    asked = []

    def download(repo: str, filename: str, revision: str = "main") -> str:
        asked.append((repo, filename, revision))
        return str(published[(repo, filename, revision)])

    monkeypatch.setattr(loading, "hf_hub_download", download)
    return {"asked": asked, "adapter": adapter}


def test_a_preset_fills_only_what_the_user_left_unset() -> None:
    sections = {"generation": GenerationSettings, "refine_face": FaceSettings, "upscale": UpscaleSettings}
    record = {"model": {"base_model": "mine"}, "generation": {"guidance_scale": 1.5}, "refine_face": {"strength": 0.4}}
    record |= {"upscale": {"strength": 0.1}, "output_dir": "runs/x"}
    filled = apply_preset(record, "lightning-4", sections)
    assert filled["model"] == {"base_model": "mine", "motion_adapter": PRESETS["lightning-4"].motion_adapter}
    assert filled["generation"] == {"scheduler": "euler-trailing", "num_inference_steps": 4, "guidance_scale": 1.5}
    assert filled["refine_face"]["num_inference_steps"] == 4  # 4 x 0.4 leaves one step
    assert filled["upscale"]["num_inference_steps"] == 10  # 4 x 0.1 would leave none
    assert filled["output_dir"] == "runs/x" and record["generation"] == {"guidance_scale": 1.5}  # not changed
    lcm = with_preset(ModelSettings(), "lcm")
    assert (lcm.lora, lcm.lora_scale, lcm.motion_adapter) == (PRESETS["lcm"].lora, 0.8, "wangfuyun/AnimateLCM")
    upscale = with_preset(UpscaleSettings(strength=0.25), "lcm")
    assert (upscale.scheduler, upscale.num_inference_steps, upscale.guidance_scale) == ("lcm", 6, 2.0)
    with pytest.raises(SettingError, match="unknown preset 'turbo'"):
        apply_preset({}, "turbo", sections)


def test_lightning_4_loads_the_published_files_and_samples_4_steps_without_a_guidance_pass(
    tiny_model, hub: dict, tmp_path: Path
) -> None:
    base, _ = tiny_model
    pipe = loading.load_pipeline(with_preset(ModelSettings(str(base)), "lightning-4"))
    assert hub["asked"] == [LIGHTNING_4]

    settings = with_preset(quick_settings(num_frames=4), "lightning-4")
    calls = record_unet_calls(pipe, settings)
    assert len(calls) == 4 and all(args[0].shape[0] == 1 for args, _ in calls)  # no unconditional half
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler" and pipe.scheduler.timesteps[0] == 999

    comfyui = tmp_path / "animatediff_lightning_4step_comfyui.safetensors"  # the same weights, original layout
    save_file(original_motion_layout(hub["adapter"]), comfyui)
    output = tmp_path / "frames"  # PNG frames: lossless, to compare with the diffusers file's
    argv = ["generate", "--preset", "lightning-4", "--base-model", str(base), "--motion-adapter", str(comfyui)]
    argv += ["--prompt", "a photo of a cat", "--num-frames", "4", "--height", "64", "--width", "64", "-o", str(output)]
    assert main(argv) == 0
    sidecar = json.loads((tmp_path / "frames.json").read_text())
    assert sidecar["model"]["motion_adapter"] == str(comfyui)  # the user's file wins over the preset's
    assert (sidecar["generation"]["scheduler"], sidecar["generation"]["num_inference_steps"]) == ("euler-trailing", 4)
    assert np.array_equal(to_uint8(read_video(output)), to_uint8(generate(pipe, settings)))


def test_the_lcm_preset_runs_a_whole_chain_at_few_steps(tiny_model, hub: dict, tmp_path: Path) -> None:
    base, motion = tiny_model
    chain = {
        "preset": "lcm",
        "output_dir": str(tmp_path / "run"),
        "model": {"base_model": str(base), "motion_adapter": str(motion)},  # AnimateLCM's is not offline
        "generation": {"prompt": "a photo of a woman", "num_frames": 4, "height": 64, "width": 64},
        "refine_face": {"prompt": "a woman", "detector": "opencv", "guide_size": 64, "strength": 0.4},
        "upscale": {"prompt": "a woman", "tile": 64, "overlap": 16, "strength": 0.1},
    }
    video = run_chain(chain)
    assert hub["asked"] == [LCM_LORA] and read_video(video).shape == (4, 3, 128, 128)
    sidecars = {stage: json.loads((tmp_path / "run" / f"{stage}.json").read_text()) for stage in STAGES}
    assert all(sidecar["model"]["lora_scale"] == 0.8 for sidecar in sidecars.values())
    steps = {
        stage: (sidecars[stage][stage]["scheduler"], sidecars[stage][stage]["num_inference_steps"]) for stage in STAGES
    }
    assert steps == {"generation": ("lcm", 6), "refine_face": ("lcm", 6), "upscale": ("lcm", 10)}  # 0.1 x 10 = 1

    without_lora = chain | {"output_dir": str(tmp_path / "plain"), "model": chain["model"] | {"lora_scale": 0.0}}
    run_chain({key: value for key, value in without_lora.items() if key not in ("refine_face", "upscale")})
    lora, plain = (read_video(tmp_path / run / "generation.mp4") for run in ("run", "plain"))
    assert not torch.equal(lora, plain)  # the LoRA is applied at its scale


def test_a_preset_file_that_cannot_be_fetched_says_how_to_get_it(tiny_model, capsys, tmp_path: Path) -> None:
    base, _ = tiny_model
    argv = ["generate", "--preset", "lightning-8", "--base-model", str(base), "--prompt", "a cat"]
    assert main([*argv, "-o", str(tmp_path / "x.mp4")]) == 2
    error = capsys.readouterr().err
    assert "huggingface-cli download ByteDance/AnimateDiff-Lightning animatediff_lightning_8step_diffusers" in error


def test_a_lora_for_another_model_is_refused(tiny_model, tmp_path: Path) -> None:
    base, motion = tiny_model
    layer = "lora_unet_no_such_layer"
    lora = {f"{layer}.lora_down.weight": torch.zeros(2, 8), f"{layer}.lora_up.weight": torch.zeros(8, 2)}
    save_file(lora | {f"{layer}.alpha": torch.tensor(2.0)}, tmp_path / "other.safetensors")
    with pytest.raises(loading.ModelLoadError, match=r"does not fit the SD-1\.5 UNet"):
        loading.load_pipeline(ModelSettings(str(base), str(motion), lora=str(tmp_path / "other.safetensors")))


def test_a_chain_config_names_its_preset(tmp_path: Path) -> None:
    from magicme.chain import parse_chain

    config = yaml.safe_load("preset: lightning-8\ngeneration: {prompt: a cat}\nupscale: {prompt: a cat}\n")
    _, _, model, stages = parse_chain(config, "chain.yaml")
    assert model.motion_adapter.endswith("animatediff_lightning_8step_diffusers.safetensors")
    assert stages["generation"].num_inference_steps == 8 and stages["upscale"].scheduler == "euler-trailing"
