"""The world model: its tokenizer, its training data and loop, and the trained weights that ship."""

import re
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from torch import nn

from magicme.identity.augment import FAR_PREFIXES, NEAR_PREFIXES
from magicme.io.video import to_uint8
from magicme.models.loading import load_pipeline
from magicme.settings import GenerationSettings, ModelSettings
from magicme.t2v.generate import generate
from magicme.world.instruments import world_instruments
from magicme.world.model import WORLD_MODEL, world_model_paths, world_words, write_world_tokenizer
from magicme.world.train import (
    GroupTuningSettings,
    WorldTrainingSettings,
    encode,
    export_world_model,
    fit,
    render_clips,
    render_stills,
    train_world_model,
    tune_on_groups,
)


def test_every_world_word_is_one_token_and_other_text_still_tokenizes(tmp_path: Path) -> None:
    tokenizer = write_world_tokenizer(tmp_path)
    for word in world_words():
        assert tokenizer.tokenize(word) == [word + "</w>"]
    assert tokenizer.tokenize("a photo of a dog") == ["a</w>", "photo</w>", "of</w>", "a</w>", "d", "o", "g</w>"]


def test_every_third_still_is_augmented_and_captioned_as_the_id_module_does() -> None:
    stills, captions = render_stills(30, seed=0)
    prefixes = "|".join(FAR_PREFIXES + NEAR_PREFIXES)
    trait = r"\w+ (?:skinned|faced|haired|eyed|wearing) "
    for index, (still, text) in enumerate(zip(stills, captions, strict=True)):
        black = (still == 0).all(dim=0).float().mean().item()  # the augmentation's canvas and rotation corners
        if index % 3:
            assert re.fullmatch(r"a (far away |close up )?photo of a .* (on|in) the \w+", text), text
            assert black == 0, "plain stills are the world's renders"
        else:
            assert re.fullmatch(f"({prefixes})photo of a ({trait})*person", text), text
            if text.startswith(FAR_PREFIXES):
                assert black > 0, "zoomed out onto black"


def test_a_share_of_stills_and_clips_show_groups_named_left_to_right() -> None:
    """The data the model learns several people from: stills and clips of two or three side by side."""
    stills, captions = render_stills(60, seed=0, group_share=0.5)
    assert stills.shape == (60, 3, 64, 64)
    groups = [text for text in captions if text.count("person") > 1]
    assert 15 <= len(groups) <= 45 and all(text.count("person") <= 3 for text in groups)
    assert all(re.fullmatch(r"a (close up )?photo of a .* and a .* (on|in) the \w+", text) for text in groups), groups
    _, medium_only = render_stills(20, seed=0, group_share=1.0, close_groups=False)  # as the tuning draws them
    assert all(text.startswith("a photo of") and text.count("person") > 1 for text in medium_only), medium_only
    clips, clip_captions = render_clips(4, seed=1, group_share=1.0)
    assert clips.shape == (4, 16, 3, 64, 64) and all(text.count("person") in (2, 3) for text in clip_captions)
    for clip in clips:  # the group stands still: a frame is the first moved sideways, or the first itself
        assert (clip[0] == clip[-1]).all() or (clip[0].float() - clip[-1].float()).abs().mean() > 1


def test_without_groups_the_training_data_is_what_the_shipped_model_learned_from() -> None:
    """`group_share` 0 draws nothing extra, so `python scripts/train_world.py --seed 0` still renders the
    stills and clips the shipped weights were trained on (this digest was checked against that code)."""
    import hashlib

    stills, captions = render_stills(30, seed=0)
    clips, clip_captions = render_clips(2, seed=1)
    data = stills.numpy().tobytes() + "|".join(captions).encode() + clips.numpy().tobytes()
    digest = hashlib.sha256(data + "|".join(clip_captions).encode()).hexdigest()
    assert digest == "128dbbf7a89a79edc586e1148f9b873568635d7d1db96643e7a826f877185676"


def toy_fit(run_dir: Path, killed_after: int | None = None) -> torch.Tensor:
    """Fit a line for 20 steps, checkpointing every 5; `killed_after` interrupts it like Ctrl-C."""
    torch.manual_seed(0)
    model, target, calls = nn.Linear(4, 1), torch.tensor([[1.0, -2.0, 0.5, 3.0]]), []

    def loss(generator: torch.Generator) -> torch.Tensor:
        calls.append(1)
        if killed_after is not None and len(calls) > killed_after:
            raise KeyboardInterrupt
        x = torch.randn(8, 4, generator=generator)
        return nn.functional.mse_loss(model(x), x @ target.T)

    return fit(run_dir, model, loss, 20, 1e-2, seed=0, every=5).weight.detach().clone()


def test_fit_resumes_bit_for_bit(tmp_path: Path) -> None:
    straight = toy_fit(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        toy_fit(tmp_path / "interrupted", killed_after=12)  # the checkpoint of step 10 survives
    assert torch.equal(toy_fit(tmp_path / "interrupted"), straight)


def test_training_runs_every_stage_and_the_result_loads(tmp_path: Path) -> None:
    settings = WorldTrainingSettings(stills=64, clips=4, autoencoder_steps=2, image_steps=2, motion_steps=2)
    pipe, adapter = train_world_model(tmp_path / "run", settings)
    assert (tmp_path / "run" / "motion" / "final.safetensors").is_file()
    stills, _ = render_stills(settings.stills, settings.seed)
    assert encode(pipe.vae, stills)[0].std().item() == pytest.approx(1.0, abs=1e-3)  # SD's latent scaling, measured
    base, motion = world_model_paths(export_world_model(pipe, adapter, tmp_path / "model"))
    model = ModelSettings(base_model=str(base), motion_adapter=str(motion), device="cpu")
    frames = generate(
        load_pipeline(model),
        GenerationSettings(
            prompt="a photo of a person on the beach", height=64, width=64, num_frames=8, num_inference_steps=2
        ),
    )
    assert frames.shape == (8, 3, 64, 64)


def weights(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    parts = ("vae", "unet", "text_encoder")
    return {
        f"{part}.{name}": p.detach().clone() for part in parts for name, p in getattr(pipe, part).named_parameters()
    }


def test_tuning_on_groups_changes_the_image_model_only_and_is_not_redone(tmp_path: Path) -> None:
    settings = WorldTrainingSettings(stills=64, clips=4, autoencoder_steps=2, image_steps=2, motion_steps=2)
    pipe, _ = train_world_model(tmp_path / "run", settings)
    trained = weights(pipe)
    tuning = GroupTuningSettings(stills=32, steps=3)
    tuned = weights(tune_on_groups(tmp_path / "tune", pipe, tuning))
    changed = {name.split(".")[0] for name, weight in trained.items() if not torch.equal(weight, tuned[name])}
    assert changed == {"unet", "text_encoder"}  # the autoencoder (and the motion module) are kept
    again, _ = train_world_model(tmp_path / "run", settings)  # every stage finished: loaded, not redone
    reloaded = weights(tune_on_groups(tmp_path / "tune", again, tuning))
    assert all(torch.equal(reloaded[name], weight) for name, weight in tuned.items())


def test_shipped_model_fits_the_size_budget() -> None:
    size = sum(f.stat().st_size for f in Path(str(WORLD_MODEL)).rglob("*") if f.is_file())
    assert size <= 20 * 2**20


def test_shipped_model_draws_the_scene_it_is_asked_for() -> None:
    base, motion = world_model_paths()
    pipe = load_pipeline(ModelSettings(base_model=str(base), motion_adapter=str(motion), device="cpu"))
    for scene in ("snow", "grass", "night"):
        settings = GenerationSettings(
            prompt=f"a photo of a person with red hair on the {scene}",
            height=64,
            width=64,
            num_frames=8,
            num_inference_steps=15,
        )
        scenes = world_instruments().classify_scenes(list(to_uint8(generate(pipe, settings))))
        assert scenes.count(scene) >= 6, (scene, scenes)
