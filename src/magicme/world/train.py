"""Training the world model like SD-1.5 + AnimateDiff, at toy size, resumably, on a CPU.

Three stages, each a folder of the run: the autoencoder on stills; the image model (text
encoder and UNet, from scratch) on captioned stills of the base identities; then the
motion module on clips with the image model frozen. `tune_on_groups` then fine-tunes a
trained model's image model on stills of which a share show groups, as SD checkpoints are
fine-tuned: the motion module, trained on the image model it started from, is kept. Every
stage goes through `fit`, which checkpoints its trainable weights, their EMA, the optimizer
and the generator, so a killed run continues bit for bit; a finished stage is never redone.
"""

import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, MotionAdapter, StableDiffusionPipeline, UNetMotionModel
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from magicme.identity.augment import augment
from magicme.identity.checkpoints import Checkpoint, load_latest_checkpoint, save_checkpoint
from magicme.identity.train import CAPTION
from magicme.io.files import atomic_path
from magicme.world import scenes
from magicme.world.instruments import (
    CROP,
    SCENE_NAMES,
    TRAITS,
    Classifier,
    FaceLocator,
    render_examples,
    save_instrument,
    trait_reader,
)
from magicme.world.model import FRAMES, SIZE, build_world_motion_adapter, build_world_pipeline, write_world_tokenizer

Loss = Callable[[torch.Generator], torch.Tensor]
# SD's autoencoder weighs its KL term 1e-6 against a reconstruction loss summed over pixels;
# against our per-pixel mean that is about 1e-10: the KL term only keeps the latents tame.
KL_WEIGHT = 1e-8


@dataclass
class WorldTrainingSettings:
    seed: int = 0
    stills: int = 18000
    clips: int = 1200
    # Of stills and clips, the share that show two or three characters side by side. The shipped
    # model has none; README (Several identities in one clip) gives what 0.2 measured.
    group_share: float = 0.0
    autoencoder_steps: int = 1500
    image_steps: int = 8000
    motion_steps: int = 1000
    batch_size: int = 32  # stills per step (the autoencoder takes a quarter); clips take batch_size // FRAMES
    learning_rate: float = 5e-4
    caption_dropout: float = 0.1  # empty captions, for classifier-free guidance
    noise_offset: float = 0.05
    checkpoint_every: int = 250


@dataclass
class GroupTuningSettings:
    """Fine-tuning a trained world model's image model on stills of which `group_share` show groups."""

    seed: int = 0
    stills: int = 8000
    # The rest are single people, as in training, so they are not forgotten. Chosen on the choose
    # split among three tunings (README, Several identities in one clip): with 30% groups, single
    # identities ranked worse close up; with groups at medium range only, worse at both framings.
    group_share: float = 0.15
    close_groups: bool = True
    steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 2e-4
    caption_dropout: float = 0.1
    noise_offset: float = 0.05
    checkpoint_every: int = 250


def render_stills(
    count: int, seed: int, group_share: float = 0.0, close_groups: bool = True
) -> tuple[torch.Tensor, list[str]]:
    """(N, 3, S, S) uint8 stills of base identities at every distance and scene, and their captions.

    A `group_share` of them show a group (`render_group`), captioned left to right, so the model
    can draw several people, each where the prompt names them (two of them close up too, with
    `close_groups`). Of the others every third is
    shown as the ID module shows a photo: augmented (zoomed out onto black, or in) and captioned
    as it captions one ("zoomed in photo of a red haired person"), the traits standing where its
    tokens go. So the model knows the augmentation's words, as SD does, and learned tokens need
    not absorb them.
    """
    pick, wording, images, captions = random.Random(seed), random.Random(f"wording {seed}"), [], []
    generator = torch.Generator().manual_seed(seed)
    for index in range(count):
        if group_share and pick.random() < group_share:  # no draw without groups: the same data as before
            people, scene, distance, scene_seed = _random_group(pick, close_groups)
            group = scenes.render_group(people, scene, SIZE, distance, scene_seed, wording=wording)
            images.append(np.asarray(group.image))
            captions.append(group.caption)
            continue
        who = scenes.character(pick.randrange(scenes.BASE_IDENTITIES))
        scene, distance = pick.choice(list(scenes.SCENES)), pick.choice(list(scenes.DISTANCES))
        scale = scenes.DISTANCES[distance][1] * pick.uniform(0.9, 1.1)
        offset = (pick.uniform(-0.2, 0.2), pick.uniform(-0.05, 0.05))
        shot = scenes.render(who, scene, SIZE, scale, offset, pick.randrange(2**30))
        if index % 3:
            images.append(np.asarray(shot.image))
            captions.append(scenes.caption(who, scene, distance, wording))
        else:
            sample = augment(shot.image, shot.mask, SIZE, generator)
            images.append(((sample.pixels.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
            traits = " ".join(scenes.some_traits(who, True, wording))
            text = CAPTION.format(tokens=traits, class_word="person")
            captions.append(sample.caption_prefix + " ".join(text.split()))  # no double space when no traits
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), captions


def _random_group(pick: random.Random, close_groups: bool = True) -> tuple[list[scenes.Character], str, str, int]:
    """Two (or, a third of the time, three) different base identities, a scene, a distance and a seed:
    two stand at medium range or, with `close_groups`, close up; three at medium range (closer, they
    would not fit)."""
    count = 3 if pick.random() < 1 / 3 else 2
    people = [scenes.character(i) for i in pick.sample(range(scenes.BASE_IDENTITIES), count)]
    scene = pick.choice(list(scenes.SCENES))
    distance = "medium" if count == 3 or not close_groups else pick.choice(["medium", "close"])
    return people, scene, distance, pick.randrange(2**30)


def render_clips(count: int, seed: int, group_share: float = 0.0) -> tuple[torch.Tensor, list[str]]:
    """(N, F, 3, S, S) uint8 clips of base identities moving, and their captions; a `group_share`
    of them show a group standing still, filmed still or panning a little."""
    pick, wording, clips, captions = random.Random(seed), random.Random(f"wording {seed}"), [], []
    for _ in range(count):
        if group_share and pick.random() < group_share:  # no draw without groups: the same data as before
            people, scene, distance, scene_seed = _random_group(pick)
            pan = pick.choice([0.0, -0.08, 0.08])
            shots = [
                scenes.render_group(people, scene, SIZE, distance, scene_seed, float(pan * t))
                for t in np.linspace(-1, 1, FRAMES)
            ]
            clips.append(np.stack([np.asarray(shot.image) for shot in shots]))
            captions.append(scenes.group_caption(people, scene, distance, wording))
            continue
        who = scenes.character(pick.randrange(scenes.BASE_IDENTITIES))
        scene, motion = pick.choice(list(scenes.SCENES)), pick.choice(scenes.MOTIONS)
        renders = scenes.clip(who, scene, motion, FRAMES, SIZE, pick.randrange(2**30))
        clips.append(np.stack([np.asarray(r.image) for r in renders]))
        captions.append(scenes.caption(who, scene, "medium", wording))
    return torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3), captions


def fit(
    run_dir: Path, model: nn.Module, loss: Loss, steps: int, learning_rate: float, seed: int, every: int
) -> nn.Module:
    """Train `model`'s trainable weights on `loss` (AdamW, warm-up then cosine decay, EMA of the weights).

    Resumes from the newest checkpoint in `run_dir`; returns the model holding the EMA weights.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(params.values(), lr=learning_rate, weight_decay=0.01)
    ema = {name: p.detach().clone() for name, p in params.items()}
    generator, start = torch.Generator().manual_seed(seed), 0
    if checkpoint := load_latest_checkpoint(run_dir):
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(checkpoint.tensors[f"model.{name}"])
                ema[name].copy_(checkpoint.tensors[f"ema.{name}"])
        optimizer.load_state_dict(checkpoint.optimizer)
        generator.set_state(checkpoint.generator_state)
        start = checkpoint.step
    model.train()
    for step in tqdm(range(start, steps), desc=run_dir.name, initial=start, total=steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * min(1.0, (step + 1) / 200) * (1 + math.cos(math.pi * step / steps)) / 2
        optimizer.zero_grad()
        value = loss(generator)
        value.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        optimizer.step()
        torch._foreach_lerp_(
            list(ema.values()), [p.detach() for p in params.values()], 1 - min(0.999, (1 + step) / (10 + step))
        )
        if (step + 1) % every == 0 or step + 1 == steps:
            tensors = {f"model.{n}": p for n, p in params.items()} | {f"ema.{n}": t for n, t in ema.items()}
            save_checkpoint(run_dir, Checkpoint(step + 1, tensors, optimizer.state_dict(), generator.get_state()))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(ema[name])
    return model.eval()


def _pick(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, count, (size,), generator=generator)


def autoencoder_loss(vae: AutoencoderKL, stills: torch.Tensor, batch_size: int) -> Loss:
    def loss(generator: torch.Generator) -> torch.Tensor:
        pixels = stills[_pick(len(stills), batch_size, generator)].float() / 127.5 - 1
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        return nn.functional.mse_loss(reconstruction, pixels) + KL_WEIGHT * posterior.kl().mean()

    return loss


@torch.no_grad()
def encode(vae: AutoencoderKL, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of (N, 3, S, S) uint8 pixels, scaled by the VAE's scaling factor."""
    means, stds = [], []
    for chunk in pixels.split(256):
        posterior = vae.encode(chunk.float() / 127.5 - 1).latent_dist
        means.append(posterior.mean * vae.config.scaling_factor)
        stds.append(posterior.std * vae.config.scaling_factor)
    return torch.cat(means), torch.cat(stds)


def diffusion_loss(
    denoiser: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: DDPMScheduler,
    latents: tuple[torch.Tensor, torch.Tensor],
    conditions: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    noise_offset: float,
    batch_size: int,
) -> Loss:
    """Epsilon-prediction loss on latents drawn from their posteriors, with noise offset."""
    mean, std = latents

    def loss(generator: torch.Generator) -> torch.Tensor:
        index = _pick(len(mean), batch_size, generator)
        sample = mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)
        noise = torch.randn(sample.shape, generator=generator)
        noise += noise_offset * torch.randn(*sample.shape[:2], *[1] * (sample.dim() - 2), generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), generator=generator)
        noisy = scheduler.add_noise(sample, noise, timesteps)
        return nn.functional.mse_loss(denoiser(noisy, timesteps, conditions(index, generator)), noise)

    return loss


def trained(
    folder: Path,
    model: nn.Module,
    make_loss: Callable[[], Loss],
    steps: int,
    settings: "WorldTrainingSettings | GroupTuningSettings",
) -> nn.Module:
    """A stage's weights: from `folder/final.safetensors` when the stage has finished, else by `fit`."""
    final = folder / "final.safetensors"
    if final.is_file():
        model.load_state_dict(load_file(final), strict=False)
        return model.eval()
    model = fit(folder, model, make_loss(), steps, settings.learning_rate, settings.seed, settings.checkpoint_every)
    trainable = {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    with atomic_path(final) as partial:
        save_file(trainable, partial)
    return model


def train_world_model(run_dir: Path, settings: WorldTrainingSettings) -> tuple[StableDiffusionPipeline, MotionAdapter]:
    """Run (or resume) the three stages; returns the trained image pipeline and motion adapter."""
    torch.manual_seed(settings.seed)
    pipe = build_world_pipeline(write_world_tokenizer(run_dir / "tokenizer"))
    adapter = build_world_motion_adapter()
    stills, still_captions = render_stills(settings.stills, settings.seed, settings.group_share)
    vae = pipe.vae
    # 1. The autoencoder, on stills.
    quarter = settings.batch_size // 4
    autoencoder = lambda: autoencoder_loss(vae, stills, quarter)  # noqa: E731
    trained(run_dir / "autoencoder", vae, autoencoder, settings.autoencoder_steps, settings)
    vae.requires_grad_(False)
    unit = vae.config.scaling_factor / encode(vae, stills[:2000])[0].std().item()  # SD measured its 0.18215 so
    vae.register_to_config(scaling_factor=unit)  # the same way: scaled latents have unit variance
    # 2. The image model (text encoder and UNet), on captioned stills.
    image_model = nn.ModuleDict({"text_encoder": pipe.text_encoder, "unet": pipe.unet})
    trained(
        run_dir / "image",
        image_model,
        lambda: image_loss(pipe, stills, still_captions, settings),
        settings.image_steps,
        settings,
    )
    image_model.requires_grad_(False)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    # 3. The motion module, on clips, with the image model frozen.
    motion_unet = UNetMotionModel.from_unet2d(pipe.unet, adapter)
    motion_unet.freeze_unet2d_params()
    clips, clip_captions = render_clips(settings.clips, settings.seed + 1, settings.group_share)
    with torch.no_grad():
        texts = pipe.text_encoder(token_ids(pipe, [*clip_captions, ""]))[0]

    def clip_conditions(index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        dropped = torch.rand(len(index), generator=generator) < settings.caption_dropout
        return texts[torch.where(dropped, len(clip_captions), index)].repeat_interleave(FRAMES, 0)

    def motion_loss() -> Loss:
        mean, std = encode(vae, clips.flatten(0, 1))
        as_video = lambda x: x.unflatten(0, (len(clips), FRAMES)).transpose(1, 2)  # noqa: E731  (N, C, F, h, w)
        denoiser = lambda noisy, t, text: motion_unet(noisy, t, text).sample  # noqa: E731
        batch = max(1, settings.batch_size // FRAMES)
        video_latents = (as_video(mean), as_video(std))
        return diffusion_loss(denoiser, scheduler, video_latents, clip_conditions, settings.noise_offset, batch)

    trained(run_dir / "motion", motion_unet, motion_loss, settings.motion_steps, settings)
    motion_state = {k: v for k, v in motion_unet.state_dict().items() if "motion_modules" in k}
    adapter.load_state_dict(motion_state)
    return pipe, adapter


def image_loss(
    pipe: StableDiffusionPipeline,
    stills: torch.Tensor,
    captions: list[str],
    settings: "WorldTrainingSettings | GroupTuningSettings",
) -> Loss:
    """The image model's loss (text encoder and UNet) on captioned stills, a share of captions dropped."""
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    still_ids, empty = token_ids(pipe, captions), token_ids(pipe, [""])

    def still_conditions(index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        dropped = torch.rand(len(index), generator=generator) < settings.caption_dropout
        return pipe.text_encoder(torch.where(dropped[:, None], empty, still_ids[index]))[0]

    denoiser = lambda noisy, t, text: pipe.unet(noisy, t, text).sample  # noqa: E731
    latents = encode(pipe.vae, stills)
    return diffusion_loss(denoiser, scheduler, latents, still_conditions, settings.noise_offset, settings.batch_size)


def tune_on_groups(
    run_dir: Path, pipe: StableDiffusionPipeline, settings: GroupTuningSettings
) -> StableDiffusionPipeline:
    """Fine-tune a trained image model (text encoder and UNet) on stills of which a share show groups.

    Why a fine-tune, not groups in training from scratch: a model trained with groups from
    scratch learned single identities less well (README, Several identities in one clip). The
    autoencoder is kept, so latents and the motion module trained on them stay valid.
    """
    torch.manual_seed(settings.seed)
    pipe.vae.requires_grad_(False)
    stills, captions = render_stills(settings.stills, settings.seed + 3, settings.group_share, settings.close_groups)
    image_model = nn.ModuleDict({"text_encoder": pipe.text_encoder, "unet": pipe.unet}).requires_grad_(True)
    trained(
        run_dir / "groups", image_model, lambda: image_loss(pipe, stills, captions, settings), settings.steps, settings
    )
    image_model.requires_grad_(False)
    return pipe


def token_ids(pipe: StableDiffusionPipeline, captions: list[str]) -> torch.Tensor:
    tokenizer = pipe.tokenizer
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids


def export_world_model(pipe: StableDiffusionPipeline, adapter: MotionAdapter, folder: Path) -> Path:
    """Write the model in fp16 (half the size; it loads in any dtype) as `base/` and `motion_adapter/`."""
    for name, model in (("base", pipe), ("motion_adapter", adapter)):
        with atomic_path(folder / name) as partial:
            model.to(torch.float16).save_pretrained(partial)
            shutil.rmtree(folder / name, ignore_errors=True)
    return folder


def train_instruments(run_dir: Path, settings: WorldTrainingSettings, out: Path, steps: int = 1500) -> Path:
    """Train the face locator, scene classifier and trait reader on base identities; write them to `out`."""
    examples = render_examples(list(range(scenes.BASE_IDENTITIES)), 8000, settings.seed + 2)
    sizes = [len(v) for v in TRAITS.values()]

    def batch(generator: torch.Generator) -> torch.Tensor:
        return _pick(len(examples.images), 64, generator)

    def locator_loss(generator: torch.Generator) -> torch.Tensor:
        index = batch(generator)
        return nn.functional.binary_cross_entropy_with_logits(
            locator(examples.images[index]), examples.face_maps[index]
        )

    def scene_loss(generator: torch.Generator) -> torch.Tensor:
        index = batch(generator)
        return nn.functional.cross_entropy(scene_classifier(examples.images[index]), examples.scenes[index])

    def trait_loss(generator: torch.Generator) -> torch.Tensor:
        """Crops blurred (down- and up-scaled) and noised: generated faces are softer than renders."""
        index = batch(generator)
        side = int(torch.randint(CROP // 3, CROP + 1, (1,), generator=generator))
        crops = nn.functional.interpolate(examples.crops[index], size=side, mode="bilinear", antialias=True)
        crops = nn.functional.interpolate(crops, size=CROP, mode="bilinear")
        crops = crops + 0.03 * torch.rand(len(index), 1, 1, 1, generator=generator) * torch.randn(
            crops.shape, generator=generator
        )
        logits = traits(crops).split(sizes, dim=1)
        return sum(nn.functional.cross_entropy(part, examples.traits[index, i]) for i, part in enumerate(logits))

    torch.manual_seed(settings.seed)
    locator, scene_classifier, traits = FaceLocator(), Classifier(len(SCENE_NAMES)), trait_reader()
    for name, net, loss in (
        ("face_locator", locator, locator_loss),
        ("scene_classifier", scene_classifier, scene_loss),
        ("traits", traits, trait_loss),
    ):
        if not (out / f"{name}.safetensors").is_file():
            fit(run_dir / name, net, loss, steps, 2e-3, settings.seed, settings.checkpoint_every)
            save_instrument(net, out / f"{name}.safetensors")
    return out
