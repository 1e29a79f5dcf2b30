import dataclasses
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from magicme.cli import main
from magicme.identity import train as training
from magicme.identity.files import load_identity
from magicme.identity.masks import prepare_masks
from magicme.identity.photos import load_photos
from magicme.identity.train import IdentityTrainer, draw_batch, masked_loss, train_identity, training_loss
from magicme.io.video import read_video
from magicme.settings import TrainingSettings


@pytest.fixture
def settings(tiny_model, astronaut_folder: Path, tmp_path: Path) -> TrainingSettings:
    """Fast settings on the tiny model: 64 px, batch 2, offline masks, no previews."""
    return TrainingSettings(
        photos=str(astronaut_folder),
        name="astro",
        class_word="woman",
        base_model=str(tiny_model[0]),
        output_dir=str(tmp_path / "run"),
        masks="offline",
        resolution=64,
        steps=4,
        batch_size=2,
        checkpoint_every=2,
        validation_every=0,
    )


def make_trainer(settings: TrainingSettings, tmp_path: Path) -> IdentityTrainer:
    photos = load_photos(Path(settings.photos), settings.resolution)
    masked = prepare_masks(photos, settings.masks, settings.class_word, tmp_path / "masks")
    return IdentityTrainer(settings, masked, Accelerator(cpu=True))


def test_masked_loss_ignores_the_background_and_normalises_by_area() -> None:
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randn(2, 4, 8, 8, generator=generator, requires_grad=True)
    target = torch.randn(2, 4, 8, 8, generator=generator)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1
    loss = masked_loss(prediction, target, mask)
    (gradient,) = torch.autograd.grad(loss, prediction)

    outside = (1 - mask).bool().expand_as(target)
    changed_target = target.clone()
    changed_target[outside] = 100.0
    changed_prediction = prediction.detach().clone()
    changed_prediction[outside] = -100.0
    changed_prediction.requires_grad_(True)
    changed_loss = masked_loss(changed_prediction, changed_target, mask)
    (changed_gradient,) = torch.autograd.grad(changed_loss, changed_prediction)
    assert torch.equal(loss, changed_loss) and torch.equal(gradient, changed_gradient)
    assert (gradient[outside] == 0).all()

    inside = mask.bool().expand_as(target)
    expected = ((prediction - target) ** 2)[inside].reshape(2, -1).mean(dim=1).mean()
    assert torch.allclose(loss, expected), "the loss is the mean error over the mask's area"


def test_only_the_k_rows_change(settings: TrainingSettings, tmp_path: Path) -> None:
    trainer = make_trainer(settings, tmp_path)
    pipe = trainer.pipe
    frozen = {
        name: {key: value.clone() for key, value in module.state_dict().items()}
        for name, module in (("unet", pipe.unet), ("vae", pipe.vae), ("text_encoder", pipe.text_encoder))
    }
    start = trainer.rows.rows.detach().clone()
    for _ in range(3):
        trainer.step()
    rows = "embeddings.token_embedding.parametrizations.weight.0.rows"
    for name, module in (("unet", pipe.unet), ("vae", pipe.vae), ("text_encoder", pipe.text_encoder)):
        after = module.state_dict()
        changed = [key for key, value in frozen[name].items() if not torch.equal(value, after[key])]
        expected = [key for key in frozen[name] if key.endswith(".rows")]  # the K trainable rows, nothing else
        assert changed == expected and len(expected) == (name == "text_encoder"), (name, changed)
    assert [name for name, p in pipe.text_encoder.named_parameters() if p.requires_grad] == [rows]
    assert not torch.equal(trainer.rows.rows, start)
    table = pipe.text_encoder.get_input_embeddings().weight  # the parametrized view
    ids = pipe.tokenizer.convert_tokens_to_ids(trainer.tokens)
    assert torch.equal(table[ids], trainer.rows.rows)
    original = frozen["text_encoder"]["embeddings.token_embedding.parametrizations.weight.original"]
    assert torch.equal(table[: ids[0]], original[: ids[0]])


def test_rows_start_from_the_init_words(settings: TrainingSettings, tmp_path: Path) -> None:
    trainer = make_trainer(dataclasses.replace(settings, init_words=["cat", "dog"]), tmp_path)
    table = trainer.pipe.text_encoder.get_input_embeddings().parametrizations.weight.original
    vocab = trainer.pipe.tokenizer.get_vocab()
    expected = table[[vocab["cat</w>"], vocab["dog</w>"], vocab["cat</w>"], vocab["dog</w>"]]]
    assert torch.equal(trainer.rows.rows.detach(), expected)


def test_loss_drops_over_steps(settings: TrainingSettings, tmp_path: Path) -> None:
    trainer = make_trainer(dataclasses.replace(settings, masks="none", batch_size=4, learning_rate=1e-2), tmp_path)

    @torch.no_grad()
    def held_out_loss() -> float:  # the same 8 draws every time: a paired comparison
        generator = torch.Generator().manual_seed(1234)
        batches = [draw_batch(trainer.masked, trainer.settings, trainer.caption, generator) for _ in range(8)]
        losses = [
            training_loss(trainer.pipe, trainer.text_encoder, trainer.unet, b, trainer.settings, generator)
            for b in batches
        ]
        return float(torch.stack(losses).mean())

    before = held_out_loss()
    for _ in range(20):
        trainer.step()
    after = held_out_loss()
    assert after < before - 0.005, f"loss did not drop: {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("augmentation", ["flip", "none"])
def test_cached_photo_latents_train_exactly_as_encoding_every_step(
    settings: TrainingSettings, tmp_path: Path, augmentation: str
) -> None:
    """Each view is encoded once, and the losses are the ones re-encoding it at every step gives."""
    settings = dataclasses.replace(settings, augment=augmentation, batch_size=4)
    cached, fresh = make_trainer(settings, tmp_path / "a"), make_trainer(settings, tmp_path / "b")
    encodes = []
    hook = cached.pipe.vae.encoder.register_forward_pre_hook(lambda module, args: encodes.append(len(args[0])))
    losses, fresh_losses = [], []
    for _ in range(6):
        losses.append(cached.step())
        fresh.latent_cache.clear()
        fresh_losses.append(fresh.step())
    hook.remove()
    assert losses == fresh_losses
    views = len(cached.masked) * (2 if augmentation == "flip" else 1)
    assert set(encodes) == {1} and len(encodes) == len(cached.latent_cache.moments) <= views < 6 * 4
    assert cached.latent_cache.moments.keys() <= {(i, m) for i in range(len(cached.masked)) for m in (False, True)}


def test_the_papers_augmentation_makes_new_pixels_every_step(settings: TrainingSettings, tmp_path: Path) -> None:
    trainer = make_trainer(settings, tmp_path)
    batch = draw_batch(trainer.masked, trainer.settings, trainer.caption, torch.Generator().manual_seed(0))
    assert batch.views is None, "rotations and zooms: nothing to reuse"
    trainer.step()
    assert not trainer.latent_cache.moments


def test_identities_trained_together_learn_what_each_learns_alone(
    settings: TrainingSettings, tmp_path: Path, monkeypatch
) -> None:
    """3 identities share each UNet call and end within rounding of training each alone with its seed."""
    names = ["ann", "bob", "cid"]
    together = [
        dataclasses.replace(settings, name=name, seed=seed, output_dir=str(tmp_path / "together" / name))
        for seed, name in enumerate(names)
    ]
    alone = [dataclasses.replace(s, output_dir=str(tmp_path / "alone" / s.name)) for s in together]
    unet_batches = []
    real_losses = training.batch_losses

    def counting(text_encoder, unet, batches, dtype):
        unet_batches.append(sum(len(b.noisy) for b in batches))
        return real_losses(text_encoder, unet, batches, dtype)

    monkeypatch.setattr(training, "batch_losses", counting)
    packed = [load_identity(path) for path in training.train_identities(together)]
    assert unet_batches == [3 * settings.batch_size] * settings.steps, "one UNet call per step for all three"
    for identity, single in zip(packed, alone, strict=True):
        own = load_identity(train_identity(single))
        assert identity.name == own.name and identity.metadata["steps_trained"] == settings.steps
        assert (identity.embeddings - own.embeddings).abs().max() < 1e-5
    assert not torch.equal(packed[0].embeddings, packed[1].embeddings), "each learned its own rows"


@pytest.mark.parametrize(
    ("change", "message"),
    [({"lora_rank": 4}, "share the UNet"), ({"resolution": 32}, "resolution"), ({"name": "astro"}, "different names")],
)
def test_identities_that_cannot_share_a_model_are_refused(settings: TrainingSettings, change, message) -> None:
    other = dataclasses.replace(settings, name="other", output_dir=settings.output_dir + "-other")
    with pytest.raises(ValueError, match=message):
        training.train_identities([settings, dataclasses.replace(other, **change)])


def test_run_writes_identity_exports_masks_and_checkpoints(settings: TrainingSettings) -> None:
    settings = dataclasses.replace(settings, validation_every=2)
    identity_path = train_identity(settings)
    run = Path(settings.output_dir)
    identity = load_identity(identity_path)
    assert identity.name == "astro" and identity.class_word == "woman"
    assert identity.embeddings.shape == (4, 32) and identity.metadata["steps_trained"] == 4
    assert torch.equal(load_identity(run / "astro.pt").embeddings, identity.embeddings)
    assert not (run / "astro.diffusers.safetensors").exists(), "astro.safetensors serves diffusers itself"
    assert (run / "masks.png").is_file() and len(list((run / "masks").glob("*.png"))) == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert sorted(p.name for p in (run / "previews").iterdir()) == ["step-000002-0.png", "step-000004-0.png"]


def test_exports_load_in_diffusers_with_the_same_vectors(settings: TrainingSettings, make_pipe) -> None:
    identity = load_identity(train_identity(settings))
    run = Path(settings.output_dir)
    for export in ("astro.pt", "astro.safetensors"):
        pipe = make_pipe()
        pipe.load_textual_inversion(str(run / export))  # each file names its token <astro>
        ids = pipe.tokenizer.convert_tokens_to_ids(identity.tokens)
        assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], identity.embeddings), export


def test_resume_equals_an_uninterrupted_run(settings: TrainingSettings, tmp_path: Path) -> None:
    straight = load_identity(train_identity(settings)).embeddings
    halves = dataclasses.replace(settings, output_dir=str(tmp_path / "halves"))
    train_identity(dataclasses.replace(halves, steps=2))
    resumed = load_identity(train_identity(dataclasses.replace(halves, resume=True))).embeddings
    assert torch.equal(straight, resumed)


def test_ctrl_c_leaves_a_checkpoint_that_resumes(settings: TrainingSettings, tmp_path: Path, monkeypatch) -> None:
    straight = load_identity(train_identity(dataclasses.replace(settings, checkpoint_every=100))).embeddings
    interrupted = dataclasses.replace(settings, output_dir=str(tmp_path / "interrupted"), checkpoint_every=100)
    real_step = training.step_together

    def step_then_interrupt(trainers: list[IdentityTrainer]) -> list[float]:
        if trainers[0].step_count == 3:
            raise KeyboardInterrupt
        return real_step(trainers)

    monkeypatch.setattr(training, "step_together", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_identity(interrupted)
    assert (Path(interrupted.output_dir) / "checkpoints" / "step-000003").is_dir()
    assert load_identity(Path(interrupted.output_dir) / "astro.safetensors").metadata["steps_trained"] == 3
    monkeypatch.undo()
    resumed = load_identity(train_identity(dataclasses.replace(interrupted, resume=True))).embeddings
    assert torch.equal(straight, resumed)


def test_an_existing_run_is_not_overwritten(settings: TrainingSettings) -> None:
    train_identity(settings)
    with pytest.raises(ValueError, match="already holds a training run; set `resume`"):
        train_identity(settings)


def test_cli_train_then_generate_with_the_identity(settings: TrainingSettings, tiny_model, tmp_path: Path) -> None:
    run = tmp_path / "cli-run"
    train_args = [settings.photos, "--name", "astro", "--class-word", "woman", "--base-model", settings.base_model]
    train_args += ["--output-dir", str(run), "--masks", "offline", "--resolution", "64", "--steps", "2"]
    assert main(["train", *train_args, "--batch-size", "1", "--validation-every", "0"]) == 0
    video = tmp_path / "astro.gif"
    generate = ["--base-model", str(tiny_model[0]), "--motion-adapter", str(tiny_model[1])]
    generate += ["--identity", str(run / "astro.safetensors"), "--prompt", "a photo of <astro> woman waving"]
    generate += ["--num-frames", "4", "--height", "64", "--width", "64", "--num-inference-steps", "1"]
    assert main(["generate", *generate, "-o", str(video)]) == 0
    assert read_video(video).shape == (4, 3, 64, 64)


def test_training_needs_photos_and_a_name(capsys) -> None:
    assert main(["train", "--name", "x"]) == 2
    assert "--name: training needs PHOTOS (a folder of photos) and a --name" in capsys.readouterr().err


def test_module_reads_as_documented() -> None:
    assert training.CAPTION.format(tokens="<a> <a>_1", class_word="dog") == "photo of a <a> <a>_1 dog"


def test_identity_lora_trains_saves_and_loads_with_the_identity(
    settings: TrainingSettings, make_pipe, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from magicme.cli import main
    from magicme.t2v.generate import generate
    from tests.conftest import quick_settings

    identity_path = train_identity(dataclasses.replace(settings, lora_rank=2, steps=2, lora_learning_rate=1e-2))
    run = Path(settings.output_dir)
    assert load_identity(identity_path).lora == run / "astro.lora.safetensors"
    assert all(key.startswith("lora_unet_") for key in load_file(str(run / "astro.lora.safetensors")))  # kohya's
    prompt = quick_settings(prompt="a photo of <astro> woman")
    with_lora = generate(make_pipe([str(identity_path)]), prompt)
    tokens_only = generate(make_pipe([str(run / "astro.pt")]), prompt)
    assert not torch.allclose(with_lora, tokens_only, atol=1e-4), "the identity's LoRA must take effect"

    assert main(["convert", str(identity_path), str(tmp_path / "shared.safetensors")]) == 0
    assert load_identity(tmp_path / "shared.safetensors").lora == tmp_path / "shared.lora.safetensors"
    assert torch.allclose(generate(make_pipe([str(tmp_path / "shared.safetensors")]), prompt), with_lora, atol=1e-6)

    resumed = dataclasses.replace(settings, lora_rank=2, steps=3, lora_learning_rate=1e-2, resume=True)
    assert load_identity(train_identity(resumed)).metadata["steps_trained"] == 3


def test_gradient_checkpointing_gives_the_same_step(settings: TrainingSettings, tmp_path: Path) -> None:
    plain = make_trainer(settings, tmp_path / "plain")
    checkpointed = make_trainer(dataclasses.replace(settings, gradient_checkpointing=True), tmp_path / "checkpointed")
    assert checkpointed.pipe.unet.is_gradient_checkpointing
    assert plain.step() == pytest.approx(checkpointed.step(), abs=1e-6)
    assert torch.allclose(plain.rows.rows, checkpointed.rows.rows, atol=1e-6)


def test_previews_can_include_a_short_clip(settings: TrainingSettings, tiny_model) -> None:
    settings = dataclasses.replace(settings, steps=2, validation_every=2, validation_motion_adapter=str(tiny_model[1]))
    train_identity(settings)
    previews = Path(settings.output_dir) / "previews"
    assert sorted(p.name for p in previews.iterdir()) == ["step-000002-0.mp4", "step-000002-0.png"]
    assert read_video(previews / "step-000002-0.mp4").shape == (8, 3, 64, 64)


def test_a_v_prediction_model_trains_on_velocity_and_others_are_refused(
    settings: TrainingSettings, monkeypatch
) -> None:
    """Same draws, two models: the epsilon one's target is the noise, the v one's (noise - sigma x_t) / alpha."""
    from types import SimpleNamespace

    from diffusers import DDIMScheduler

    from magicme.testing.tiny import build_tiny_model

    batch = training.Batch(torch.rand(2, 3, 64, 64) * 2 - 1, torch.ones(2, 1, 64, 64), ["a photo of a woman"] * 2, None)
    targets, inputs = {}, {}
    for prediction in ("epsilon", "v_prediction"):
        pipe = build_tiny_model()[0]
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction)
        pipe = training.prepare_training_pipeline(pipe, settings, Accelerator(cpu=True))

        def unet(noisy, timesteps, text, prediction=prediction):
            inputs[prediction] = (noisy, timesteps)
            return SimpleNamespace(sample=torch.zeros_like(noisy))

        monkeypatch.setattr(training, "masked_loss", lambda p, target, m, k=prediction: targets.setdefault(k, target))
        training.training_loss(pipe, pipe.text_encoder, unet, batch, settings, torch.Generator().manual_seed(0))
    noisy, timesteps = inputs["v_prediction"]
    assert torch.equal(noisy, inputs["epsilon"][0]), "the same latents, noise and timesteps"
    alpha_bar = pipe.scheduler.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
    velocity = (targets["epsilon"] - (1 - alpha_bar).sqrt() * noisy) / alpha_bar.sqrt()
    assert torch.allclose(targets["v_prediction"], velocity, atol=1e-4)

    pipe = build_tiny_model()[0]
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="sample")
    with pytest.raises(ValueError, match="predicts 'sample'; the ID module trains models that predict epsilon or v"):
        training.prepare_training_pipeline(pipe, settings, Accelerator(cpu=True))


def interrupt_at_a_random_time(command: list[str], seed: int) -> int:
    """Run `command` in a process of its own and send it a real SIGINT at a random moment after its
    training loop has begun (its progress bar shows); returns its exit code."""
    import random
    import signal
    import subprocess
    import sys
    import threading
    import time

    process = subprocess.Popen([sys.executable, "-m", "magicme.cli", *command], stderr=subprocess.PIPE)
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.extend(iter(lambda: process.stderr.read(64), b"")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while b"learning identity" not in b"".join(output) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.2, 1.5))
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=120)
    reader.join(timeout=10)
    return code


def test_a_real_ctrl_c_at_any_moment_then_resume_is_bit_identical(settings: TrainingSettings, tmp_path: Path) -> None:
    """`magicme run` handles Ctrl-C the same way (tests/test_stages.py: a chain interrupted, then resumed)."""
    settings = dataclasses.replace(settings, steps=60, checkpoint_every=100)
    straight = load_identity(train_identity(settings)).embeddings
    run_dir = tmp_path / "interrupted"
    argv = ["train", settings.photos, "--name", "astro", "--class-word", "woman", "--base-model", settings.base_model]
    argv += ["--output-dir", str(run_dir), "--masks", "offline", "--resolution", "64", "--steps", "60"]
    argv += ["--batch-size", "2", "--checkpoint-every", "100", "--validation-every", "0"]
    assert interrupt_at_a_random_time(argv, seed=1) == 130
    steps_done = load_identity(run_dir / "astro.safetensors").metadata["steps_trained"]
    assert 0 < steps_done < 60, "the Ctrl-C landed in the training loop"
    train_identity(dataclasses.replace(settings, output_dir=str(run_dir), resume=True))
    assert torch.equal(load_identity(run_dir / "astro.safetensors").embeddings, straight)


def test_resuming_with_other_settings_is_refused_but_more_steps_are_fine(settings: TrainingSettings) -> None:
    train_identity(dataclasses.replace(settings, steps=2))
    with pytest.raises(ValueError, match=r"was started with `learning_rate` 0\.001 \(now 0\.01\)"):
        train_identity(dataclasses.replace(settings, learning_rate=0.01, resume=True))
    identity = load_identity(train_identity(dataclasses.replace(settings, steps=3, resume=True)))
    assert identity.metadata["steps_trained"] == 3
