import dataclasses
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from magicme.io.video import read_video
from magicme.models import loading
from magicme.models.loading import ModelLoadError, check_sd15_checkpoint, load_pipeline
from magicme.settings import ModelSettings
from magicme.t2v.generate import generate
from magicme.t2v.noise_prior import sample_noise_prior
from magicme.testing.tiny import TEXT_WIDTH
from tests.conftest import quick_settings, record_unet_calls


def test_gamma_zero_reproduces_stock_animatediff(tiny_pipe) -> None:
    settings = quick_settings(gamma=0.0, seed=4)
    ours = generate(tiny_pipe, settings)
    stock = tiny_pipe(
        prompt=settings.prompt,
        num_frames=8,
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(4),
        output_type="pt",
    ).frames[0]
    assert torch.allclose(ours, stock, atol=1e-6)
    assert not torch.allclose(generate(tiny_pipe, quick_settings(gamma=0.1, seed=4)), stock, atol=1e-3)


def test_same_seed_same_frames(tiny_pipe) -> None:
    first, again = generate(tiny_pipe, quick_settings(seed=9)), generate(tiny_pipe, quick_settings(seed=9))
    assert torch.equal(first, again)
    assert not torch.equal(first, generate(tiny_pipe, quick_settings(seed=10)))


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler-ancestral", "dpmpp-2m-karras"])
def test_prior_is_scaled_once_by_init_noise_sigma(tiny_pipe, scheduler: str) -> None:
    settings = quick_settings(scheduler=scheduler, gamma=0.2, seed=2)
    seen = record_unet_calls(tiny_pipe, settings)[0][0][0]  # (2, C, F, h, w): CFG doubles the batch
    prior = sample_noise_prior((1, 4, 8, 8, 8), 0.2, generator=torch.Generator().manual_seed(2))
    sched = tiny_pipe.scheduler
    sched.set_timesteps(settings.num_inference_steps)  # back to the first step
    expected = sched.scale_model_input(prior * sched.init_noise_sigma, sched.timesteps[0])
    assert torch.allclose(seen[:1], expected, atol=1e-5)


def test_frames_are_in_range_and_shaped(tiny_pipe) -> None:
    frames = generate(tiny_pipe, quick_settings(num_frames=5, height=48, width=72))
    assert frames.shape == (5, 3, 48, 72)
    assert frames.min() >= 0 and frames.max() <= 1


def test_freeu_changes_the_output(tiny_pipe) -> None:
    plain = generate(tiny_pipe, quick_settings())
    assert not torch.allclose(plain, generate(tiny_pipe, quick_settings(freeu=True)))
    assert torch.equal(plain, generate(tiny_pipe, quick_settings())), "FreeU must switch off again"


def test_free_init_runs_a_full_pass_per_iteration(tiny_pipe) -> None:
    calls = record_unet_calls(tiny_pipe, quick_settings(free_init=True, free_init_iters=2))
    assert len(calls) == 2 * 2  # iterations x steps


def test_free_noise_renders_longer_than_its_window(tiny_pipe) -> None:
    settings = quick_settings(num_frames=12, free_noise=True, free_noise_context=8, free_noise_stride=2)
    frames = generate(tiny_pipe, settings)
    assert frames.shape[0] == 12
    generate(tiny_pipe, quick_settings())  # and switches back off


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"height": 100}, "multiples of 8"),
        ({"gamma": 1.0}, r"gamma` must be in \[0, 1\)"),
        ({"prompt": " "}, "a prompt is needed"),
        ({"num_frames": 0}, "at least 1"),
    ],
)
def test_bad_settings_are_clear_errors(tiny_pipe, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(tiny_pipe, quick_settings(**overrides))


def test_missing_model_paths(tiny_model, tmp_path: Path) -> None:
    base, motion = tiny_model
    with pytest.raises(ModelLoadError, match=r"base model .* does not exist"):
        load_pipeline(ModelSettings(base_model=str(tmp_path / "nothing.safetensors"), motion_adapter=str(motion)))
    with pytest.raises(ModelLoadError, match=r"motion adapter .* does not exist"):
        load_pipeline(ModelSettings(base_model=str(base), motion_adapter=str(tmp_path / "mm.ckpt")))


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("conditioner.embedders.1.model.ln_final.weight", "is an SDXL checkpoint"),
        ("cond_stage_model.model.ln_final.weight", "is an SD 2.x checkpoint"),
        ("some.other.weight", "not an SD-1.5 checkpoint"),
    ],
)
def test_checkpoints_of_another_family_are_refused(tmp_path: Path, key: str, message: str) -> None:
    path = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(1), "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, path)
    if message.startswith("not"):
        save_file({key: torch.zeros(1)}, path)
    with pytest.raises(ModelLoadError, match=message):
        check_sd15_checkpoint(path)


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(64)}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        check_sd15_checkpoint(path)


@pytest.fixture(scope="module")
def motion_lora(tiny_model, tmp_path_factory) -> Path:
    """A random LoRA on the motion modules' attention, saved in diffusers' LoRA format."""
    from diffusers import AnimateDiffPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from tests.conftest import load_tiny_pipeline

    pipe = load_tiny_pipeline(tiny_model, [])
    torch.manual_seed(0)
    targets = r".*motion_modules.*\.(to_q|to_k|to_v|to_out\.0)"
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=targets))
    folder = tmp_path_factory.mktemp("motion_lora")
    AnimateDiffPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    return folder


def test_motion_lora_weight_scales_its_effect(tiny_model, tiny_pipe, motion_lora: Path) -> None:
    base, motion = tiny_model
    plain = generate(tiny_pipe, quick_settings(prompt="a cat"))
    for scale, changes in ((0.0, False), (0.6, True)):
        settings = ModelSettings(str(base), str(motion), motion_lora=str(motion_lora), motion_lora_scale=scale)
        frames = generate(load_pipeline(settings), quick_settings(prompt="a cat"))
        assert torch.allclose(frames, plain, atol=1e-6) != changes


def original_motion_lora_layout(diffusers_lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A motion LoRA in AnimateDiff's original layout, exactly as in v2_lora_ZoomIn.ckpt:
    `...motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor.to_q_lora.down.weight`."""
    state = {}
    for key, value in diffusers_lora.items():
        key = re.sub(r"(motion_modules\.\d+\.)", r"\1temporal_transformer.", key.removeprefix("unet."))
        key = key.replace(".attn1.", ".attention_blocks.0.").replace(".attn2.", ".attention_blocks.1.")
        key = re.sub(
            r"\.(to_q|to_k|to_v|to_out)(\.0)?\.lora_([AB])\.weight",
            lambda m: f".processor.{m[1]}_lora.{'down' if m[3] == 'A' else 'up'}.weight",
            key,
        )
        state[key] = value
    return state


def test_an_original_animatediff_motion_lora_loads_as_its_diffusers_twin(
    tiny_model, tiny_pipe, motion_lora: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    original = original_motion_lora_layout(load_file(str(motion_lora / "pytorch_lora_weights.safetensors")))
    assert all(".processor.to_" in key and "_lora." in key and ".temporal_transformer." in key for key in original)
    torch.save(original, tmp_path / "v2_lora_ZoomIn.ckpt")
    base, motion = tiny_model
    frames = {}
    for name, source in (("diffusers", motion_lora), ("original", tmp_path / "v2_lora_ZoomIn.ckpt")):
        settings = ModelSettings(str(base), str(motion), motion_lora=str(source), motion_lora_scale=0.6)
        frames[name] = generate(load_pipeline(settings), quick_settings(prompt="a cat"))
    assert torch.allclose(frames["original"], frames["diffusers"], atol=1e-6)
    assert not torch.allclose(frames["original"], generate(tiny_pipe, quick_settings(prompt="a cat")), atol=1e-4)


def test_a_lora_without_motion_layers_is_refused(tiny_model, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from magicme.models.motion_lora import MotionLoraError

    module = "lora_te_text_model_encoder_layers_0_mlp_fc1"  # a text-encoder LoRA: no motion-module layer
    lora = {f"{module}.lora_down.weight": torch.zeros(2, 32), f"{module}.lora_up.weight": torch.zeros(64, 2)}
    save_file(lora, str(tmp_path / "x.safetensors"))
    base, motion = tiny_model
    with pytest.raises(MotionLoraError, match="matched no layer of the motion modules"):
        load_pipeline(ModelSettings(str(base), str(motion), motion_lora=str(tmp_path / "x.safetensors")))


def original_motion_layout(adapter) -> dict[str, torch.Tensor]:
    """A MotionAdapter's weights in AnimateDiff's original file layout (as in mm_sd_v15_v2.ckpt)."""
    renames = {".attn1": ".attention_blocks.0", ".attn2": ".attention_blocks.1", ".norm1": ".norms.0"}
    renames |= {".norm2": ".norms.1", ".norm3": ".ff_norm"}
    state = {}
    for key, value in adapter.state_dict().items():
        key = re.sub(r"(motion_modules\.\d+\.)", r"\1temporal_transformer.", key)
        for new, old in renames.items():
            key = key.replace(new, old)
        state[key] = value.contiguous()
        if key.endswith("attention_blocks.0.to_q.weight"):  # original files carry positional encodings
            state[key.replace("to_q.weight", "pos_encoder.pe")] = torch.zeros(1, 32, value.shape[1])
    return state


@pytest.mark.parametrize("mid_block", [True, False], ids=["v2", "v1"])
def test_original_motion_module_files_load_with_the_right_config(monkeypatch, tmp_path: Path, mid_block: bool) -> None:
    from diffusers import MotionAdapter

    torch.manual_seed(0)
    adapter = MotionAdapter(
        block_out_channels=(16, 32),
        motion_layers_per_block=2,
        motion_norm_num_groups=8,
        motion_num_attention_heads=2,
        use_motion_mid_block=mid_block,
    )
    version = "v2" if mid_block else "v1"
    adapter.save_pretrained(tmp_path / "configs" / f"motion_adapter_v15_{version}")  # tiny stand-in configs
    monkeypatch.setattr(loading, "CONFIGS", tmp_path / "configs")
    save_file(original_motion_layout(adapter), tmp_path / "mm.safetensors")

    loaded = loading.load_motion_adapter(str(tmp_path / "mm.safetensors"), torch.float32).state_dict()
    expected = adapter.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)


def test_a_file_without_motion_modules_is_refused(tmp_path: Path) -> None:
    from magicme.models.loading import load_motion_adapter

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, tmp_path / "sd.safetensors")
    with pytest.raises(ModelLoadError, match="holds no AnimateDiff motion modules"):
        load_motion_adapter(str(tmp_path / "sd.safetensors"), torch.float32)


def test_long_video_keeps_the_prior_across_the_whole_clip(tiny_pipe) -> None:
    """64 frames through FreeNoise windows of 16: the UNet starts from our 64-frame prior, unshuffled."""
    settings = quick_settings(num_frames=64, gamma=0.3, free_noise=True, free_noise_context=16, free_noise_stride=4)
    calls = record_unet_calls(tiny_pipe, dataclasses.replace(settings, num_inference_steps=1, height=32, width=32))
    first = calls[0][0][0][:1]  # (1, C, 64, h, w), the conditional half of CFG
    prior = sample_noise_prior((1, 4, 64, 4, 4), 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(first, prior, atol=1e-6)


def test_vae_tiling_decodes_large_frames_alike(tiny_model) -> None:
    base, motion = tiny_model
    settings = quick_settings(num_frames=2, height=128, width=128, num_inference_steps=1)
    plain = generate(load_pipeline(ModelSettings(str(base), str(motion))), settings)
    tiled = generate(load_pipeline(ModelSettings(str(base), str(motion), vae_tiling=True)), settings)
    assert tiled.shape == plain.shape
    assert not torch.equal(tiled, plain), "128 px exceeds the tiny VAE's 64 px tile: tiling must engage"
    assert (tiled - plain).abs().mean() < 0.05, "tiles blend into nearly the same frames"


def test_the_vae_takes_as_many_frames_as_the_free_memory_holds(tiny_model, monkeypatch) -> None:
    from magicme.models import vae_chunks

    base, motion = tiny_model
    pipe = load_pipeline(ModelSettings(str(base), str(motion)))
    assert vae_chunks.vae_chunk(pipe, 8, 64, 64) == 1, "on the CPU one frame per call measured fastest"
    monkeypatch.setattr(vae_chunks, "ONE_FRAME_DEVICES", set())  # as on a GPU
    one_frame = vae_chunks.DECODE_BYTES_PER_PIXEL * 64 * 64 / vae_chunks.MEMORY_SHARE
    monkeypatch.setattr(vae_chunks, "free_memory", lambda device: int(3.5 * one_frame))
    assert [vae_chunks.vae_chunk(pipe, frames, 64, 64) for frames in (8, 2)] == [3, 2]
    decodes = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda module, args: decodes.append(len(args[0])))
    chunked = generate(pipe, quick_settings())
    monkeypatch.setattr(vae_chunks, "free_memory", lambda device: 0)
    assert vae_chunks.vae_chunk(pipe, 8, 64, 64) == 1, "no room: one frame at a time, never none"
    pipe.vae.enable_slicing()
    monkeypatch.setattr(vae_chunks, "free_memory", lambda device: 2**50)
    assert vae_chunks.vae_chunk(pipe, 8, 64, 64) == 1, "--vae-slicing: one frame at a time"
    sliced = generate(pipe, quick_settings())
    hook.remove()
    assert decodes == [3, 3, 2] + [1] * 8
    assert torch.allclose(chunked, sliced, atol=1e-5)


def test_compile_flag_compiles_the_unet(tiny_model) -> None:
    base, motion = tiny_model
    pipe = load_pipeline(ModelSettings(str(base), str(motion), compile_unet=True))
    assert hasattr(pipe.unet, "_orig_mod"), "the UNet is wrapped by torch.compile (compiling happens on first call)"


def test_an_uncached_hub_model_while_offline_says_how_to_fix_it(tmp_path: Path, monkeypatch, capsys) -> None:
    from magicme.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["generate", "--base-model", "nobody/no-such-model", "--prompt", "a cat", "-o", str(tmp_path / "never.mp4")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "base model nobody/no-such-model could not be loaded and is not in the local cache" in error
    assert "huggingface-cli download nobody/no-such-model" in error


def test_chain_stages_share_one_load_and_a_changed_identity_loads_again(
    tiny_model, identity_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from magicme.chain import run_chain
    from magicme.identity.files import Identity, save_identity

    loads = []
    real_load = loading.load_pipeline
    monkeypatch.setattr(loading, "load_pipeline", lambda settings: loads.append(settings) or real_load(settings))
    monkeypatch.setattr(loading, "_shared", {})
    identity = tmp_path / "alice.safetensors"
    identity.write_bytes(identity_file.read_bytes())
    base, motion = tiny_model
    stage = {"prompt": "a photo of <alice> woman", "num_inference_steps": 2}
    config = {
        "output_dir": str(tmp_path / "run"),
        "model": {"base_model": str(base), "motion_adapter": str(motion), "identities": [str(identity)]},
        "generation": dataclasses.asdict(quick_settings(prompt="a photo of <alice> woman")),
        "upscale": stage | {"strength": 0.5, "tile": 128, "overlap": 16},  # one window: the loads are the point
    }
    shared = read_video(run_chain(config))
    assert len(loads) == 1  # T2V and Tiled VCD on one set of weights

    monkeypatch.setattr(loading, "_shared", {})
    run_chain(config | {"output_dir": str(tmp_path / "fresh")})
    assert torch.equal(read_video(tmp_path / "fresh" / "upscale.mp4"), shared)  # reuse = loading afresh

    save_identity(Identity("alice", torch.randn(4, TEXT_WIDTH), class_word="woman"), identity)  # retrained in place
    run_chain(config | {"output_dir": str(tmp_path / "again")})
    assert len(loads) == 3  # the new tokens are loaded, not the cached old ones
    before, after = (read_video(tmp_path / run / "generation.mp4") for run in ("run", "again"))
    assert not torch.equal(before, after)


def test_the_shared_pipeline_watches_only_the_files_it_names(
    tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No LoRA named must not mean "the working directory": a file written there (another run's
    lock, say) neither reloads the weights nor, if it vanishes mid-scan, fails the render."""
    monkeypatch.setattr(loading, "_shared", {})
    monkeypatch.chdir(tmp_path)
    base, motion = tiny_model
    settings = ModelSettings(base_model=str(base), motion_adapter=str(motion))
    first = loading.shared_pipeline(settings)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / ".clip.mp4.lock").write_text("123")
    assert loading.shared_pipeline(settings) is first
