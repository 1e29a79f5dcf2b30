"""VCD's ID module: learn K token embeddings of a subject from a few masked photos.

Only the K new rows of the text encoder's token table train. They enter through a
`torch.nn.utils.parametrize` parametrization of the table (frozen table with the K rows
swapped in), so the UNet, the VAE and every other weight stay bit-identical and the
optimizer holds K x D numbers. The loss is the model's own prediction target (epsilon, or v
for v-prediction models) as MSE weighted by the subject mask at latent resolution and
normalised by its area (Magic-Me, section 3.1).
"""

import dataclasses
import json
import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TextIO

import torch
from accelerate import Accelerator
from diffusers import AnimateDiffPipeline, DDPMScheduler, StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from magicme.errors import SettingError
from magicme.identity.augment import augment
from magicme.identity.checkpoints import Checkpoint, load_latest_checkpoint, save_checkpoint
from magicme.identity.files import Identity, export_a1111, identity_tokens, save_identity
from magicme.identity.latent_cache import LatentCache, View
from magicme.identity.lora import add_unet_lora, save_kohya_lora
from magicme.identity.masks import contact_sheet, prepare_masks
from magicme.identity.photos import Photo, load_photos
from magicme.interrupts import stop_between_steps
from magicme.io.files import write_json
from magicme.io.locks import exclusive
from magicme.models.loading import load_image_pipeline
from magicme.settings import TrainingSettings

log = logging.getLogger("magicme")

CAPTION = "photo of a {tokens} {class_word}"
LORA_PREFIX = "lora."
GENERIC_INIT_WORDS = ("face", "person", "photo")
ROWS = "identity_rows"
LOSS_LOG = "loss.csv"  # step,loss per line in the run folder
PREDICTION_TYPES = ("epsilon", "v_prediction")
# Settings a resumed run may change: they decide how long it trains and what it writes, not what it learns.
FREE_ON_RESUME = {"resume", "steps", "output_dir", "checkpoint_every", "validation_every", "validation_prompts"}
FREE_ON_RESUME |= {"validation_motion_adapter"}


class IdentityRows(nn.Module):
    """Parametrization of the token table: the frozen table with K trainable rows swapped in."""

    def __init__(self, token_ids: torch.Tensor, initial_rows: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.rows = nn.Parameter(initial_rows.detach().clone().float())

    def forward(self, table: torch.Tensor) -> torch.Tensor:
        return table.index_put((self.token_ids,), self.rows.to(table.dtype))


@dataclass
class Batch:
    pixels: torch.Tensor  # (B, 3, S, S) in [-1, 1]
    masks: torch.Tensor  # (B, 1, S, S) in {0, 1}
    captions: list[str]
    views: list[View] | None  # which photo view each sample is, where the augmentation repeats views


def masked_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE over the mask, normalised by its area (x channels), averaged over the batch."""
    squared = (prediction.float() - target.float()) ** 2 * mask  # (B, C, h, w)
    area = mask.sum(dim=(1, 2, 3)) * prediction.shape[1]
    return (squared.sum(dim=(1, 2, 3)) / area.clamp(min=1)).mean()


def init_words(settings: TrainingSettings) -> list[str]:
    words = settings.init_words or [settings.class_word, *GENERIC_INIT_WORDS]
    return [words[i % len(words)] for i in range(settings.num_tokens)]


def add_identity_tokens(pipe: StableDiffusionPipeline, tokens: list[str], words: list[str]) -> IdentityRows:
    """Register the K tokens, start each row at its init word's embedding, make only those rows train."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    clashes = [token for token in tokens if token in tokenizer.get_vocab()]
    if clashes:
        raise ValueError(f"tokens {clashes} already exist in the tokenizer; choose another `name`")
    table = text_encoder.get_input_embeddings()
    starts = []
    for word in words:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"init word {word!r} has no tokens; use a plain word such as the class word")
        starts.append(table.weight[ids].mean(dim=0))  # a word of several tokens starts at their mean
    tokenizer.add_tokens(tokens)
    grow_token_table(text_encoder, len(tokenizer))
    token_ids = torch.tensor(tokenizer.convert_tokens_to_ids(tokens), device=text_encoder.device)
    rows = IdentityRows(token_ids, torch.stack(starts))
    parametrize.register_parametrization(text_encoder.get_input_embeddings(), "weight", rows)
    return rows


def grow_token_table(text_encoder: nn.Module, size: int) -> None:
    """Give the token table `size` rows, frozen. A table another identity's rows already train in
    (several identities learned together) grows under its parametrization, which a resize would
    drop, and those rows keep training."""
    table = text_encoder.get_input_embeddings()
    if not parametrize.is_parametrized(table, "weight"):  # the first identity: freeze the whole encoder
        text_encoder.resize_token_embeddings(size, mean_resizing=False)
        text_encoder.requires_grad_(False)
        return
    original = table.parametrizations.weight.original
    grown = torch.cat([original.detach(), original.new_zeros(size - len(original), original.shape[1])])
    table.parametrizations.weight.original = nn.Parameter(grown, requires_grad=False)
    table.num_embeddings = text_encoder.config.vocab_size = size


def draw_batch(masked: list[tuple[Photo, torch.Tensor]], settings: TrainingSettings, caption: str, generator) -> Batch:
    """Pick photos, augment each with its mask; a few samples train on the whole photo."""
    picks = torch.randint(len(masked), (settings.batch_size,), generator=generator).tolist()
    samples = [
        augment(masked[i][0].image, masked[i][1], settings.resolution, generator, settings.augment) for i in picks
    ]
    whole = torch.rand(settings.batch_size, generator=generator) < settings.whole_image_rate
    masks = torch.stack([torch.ones_like(s.mask) if w else s.mask for s, w in zip(samples, whole, strict=True)])
    views = (
        None if settings.augment == "paper" else [(i, bool(s.mirrored)) for i, s in zip(picks, samples, strict=True)]
    )
    captions = [s.caption_prefix + caption for s in samples]
    return Batch(torch.stack([s.pixels for s in samples]), masks, captions, views)


@dataclass
class DiffusionInputs:
    """One batch made ready for the UNet: its noised latents, timesteps, target, caption ids and latent mask."""

    noisy: torch.Tensor  # (B, 4, h, w)
    timesteps: torch.Tensor  # (B,)
    target: torch.Tensor  # (B, 4, h, w): the noise, or the velocity for v-prediction models
    ids: torch.Tensor  # (B, 77) caption token ids
    mask: torch.Tensor  # (B, 1, h, w)


def diffusion_inputs(
    pipe: StableDiffusionPipeline,
    batch: Batch,
    settings: TrainingSettings,
    generator: torch.Generator,
    cache: LatentCache | None = None,
) -> DiffusionInputs:
    """Encode, noise and tokenise a batch, every draw from `generator`; with `cache`, samples whose
    view it holds are not encoded again."""
    device, dtype = pipe.vae.device, pipe.vae.dtype
    with torch.no_grad():
        if cache is not None and batch.views is not None:
            latents = cache.sample(batch.pixels, batch.views, generator)
        else:
            latents = pipe.vae.encode(batch.pixels.to(device, dtype)).latent_dist.sample(generator)
        latents = latents.float() * pipe.vae.config.scaling_factor  # (B, 4, h, w)
    noise = randn_tensor(latents.shape, generator=generator, device=device)
    noise = noise + settings.noise_offset * randn_tensor((*latents.shape[:2], 1, 1), generator=generator, device=device)
    steps = pipe.scheduler.config.num_train_timesteps
    timesteps = torch.randint(steps, (latents.shape[0],), generator=generator).to(device)
    target = (
        noise
        if pipe.scheduler.config.prediction_type == "epsilon"
        else pipe.scheduler.get_velocity(latents, noise, timesteps)
    )
    ids = pipe.tokenizer(
        batch.captions, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True
    ).input_ids
    mask = nn.functional.interpolate(batch.masks.to(device), size=latents.shape[-2:], mode="area")
    noisy = pipe.scheduler.add_noise(latents, noise, timesteps)
    return DiffusionInputs(noisy, timesteps, target, torch.tensor(ids, device=device), mask)


def batch_losses(
    text_encoder: nn.Module, unet: nn.Module, batches: list[DiffusionInputs], dtype: torch.dtype
) -> list[torch.Tensor]:
    """Each batch's masked loss, from one text-encoder call and one UNet call (in `dtype`) over all of them."""
    text = text_encoder(torch.cat([b.ids for b in batches]))[0]
    noisy, timesteps = torch.cat([b.noisy for b in batches]), torch.cat([b.timesteps for b in batches])
    predictions = unet(noisy.to(dtype), timesteps, text.to(dtype)).sample.split([len(b.noisy) for b in batches])
    return [masked_loss(p, b.target, b.mask) for p, b in zip(predictions, batches, strict=True)]


def training_loss(
    pipe: StableDiffusionPipeline,
    text_encoder: nn.Module,
    unet: nn.Module,
    batch: Batch,
    settings: TrainingSettings,
    generator: torch.Generator,
    cache: LatentCache | None = None,
) -> torch.Tensor:
    """One forward pass of the ID module's objective (`text_encoder`, `unet` as accelerate prepared them)."""
    inputs = diffusion_inputs(pipe, batch, settings, generator, cache)
    return batch_losses(text_encoder, unet, [inputs], pipe.unet.dtype)[0]


def run_folder(settings: TrainingSettings) -> Path:
    return Path(settings.output_dir or Path("runs") / settings.name)


def check_training_settings(settings: TrainingSettings) -> None:
    if not settings.name or not settings.photos:
        raise SettingError("name", "training needs `photos` (a folder of photos) and a `name`, e.g. alice")
    if settings.resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8, got {settings.resolution}")
    if settings.num_tokens < 1 or settings.steps < 1 or settings.batch_size < 1:
        raise ValueError("num_tokens, steps and batch_size must be at least 1")
    has_checkpoints = (run_folder(settings) / "checkpoints").is_dir()
    if has_checkpoints and not settings.resume:
        raise ValueError(
            f"{run_folder(settings)} already holds a training run; set `resume` to continue it "
            "or another `output_dir` to start a new one"
        )
    if has_checkpoints:
        check_resumed_settings(settings)


def check_resumed_settings(settings: TrainingSettings) -> None:
    """A resumed run continues with the settings it started with: refuse a change that would make
    the identity something neither run describes (more `steps` is fine: it trains longer)."""
    recorded = json.loads((run_folder(settings) / "run.json").read_text())["training"]
    current = dataclasses.asdict(settings)
    changed = sorted(
        name for name in current.keys() - FREE_ON_RESUME if name in recorded and recorded[name] != current[name]
    )
    if changed:
        was = ", ".join(f"`{name}` {recorded[name]!r} (now {current[name]!r})" for name in changed)
        raise ValueError(
            f"{run_folder(settings)} was started with {was}; resume it with the same settings, "
            "or start a new run in another `output_dir`"
        )


def load_training_pipeline(settings: TrainingSettings, accelerator: Accelerator) -> StableDiffusionPipeline:
    return prepare_training_pipeline(load_image_pipeline(settings.base_model, torch.float32), settings, accelerator)


def prepare_training_pipeline(
    pipe: StableDiffusionPipeline, settings: TrainingSettings, accelerator: Accelerator
) -> StableDiffusionPipeline:
    """The frozen image model in the accelerator's precision, with the reference's DDPM schedule and
    the model's own prediction target (epsilon for SD 1.5, v for v-prediction fine-tunes)."""
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(
            f"{settings.base_model} predicts {prediction!r}; the ID module trains models that predict "
            f"{' or '.join(PREDICTION_TYPES)} (set in the model's scheduler config)"
        )
    pipe.scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="linear", prediction_type=prediction
    )
    pipe.unet.requires_grad_(False).to(accelerator.device, weight_dtype)
    pipe.vae.requires_grad_(False).to(accelerator.device, weight_dtype)
    pipe.text_encoder.to(accelerator.device)  # stays fp32: its K rows are what trains
    if settings.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def render_previews(pipe: StableDiffusionPipeline, settings: TrainingSettings, step: int, run_dir: Path) -> None:
    """A still (and optionally a short clip) per validation prompt, same seed each time, to watch progress."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    components = {**pipe.components, "scheduler": scheduler}
    preview = StableDiffusionPipeline(**components, requires_safety_checker=False)
    preview.set_progress_bar_config(disable=True)
    prompts = settings.validation_prompts or [f"a photo of <{settings.name}> {settings.class_word}, portrait"]
    folder = run_dir / "previews"
    folder.mkdir(parents=True, exist_ok=True)
    size = settings.resolution
    for index, prompt in enumerate(prompts):
        generator = torch.Generator().manual_seed(settings.seed)
        image = preview(prompt, height=size, width=size, num_inference_steps=25, generator=generator).images[0]
        image.save(folder / f"step-{step:06d}-{index}.png")
    if settings.validation_motion_adapter:
        video_pipe = preview_video_pipeline(pipe, settings.validation_motion_adapter)
        render_preview_clips(video_pipe, settings, prompts, folder / f"step-{step:06d}")


@lru_cache(maxsize=1)
def preview_video_pipeline(pipe: StableDiffusionPipeline, motion_adapter: str) -> AnimateDiffPipeline:
    """Built once per run: the adapter is loaded and the UNet copied into a motion UNet only here.

    The frozen UNet never changes, and the text encoder is shared, so later previews still
    show the current tokens.
    """
    from magicme.models.loading import load_motion_adapter

    adapter = load_motion_adapter(motion_adapter, pipe.unet.dtype)
    video_pipe = AnimateDiffPipeline.from_pipe(pipe, motion_adapter=adapter).to(pipe.device)
    video_pipe.set_progress_bar_config(disable=True)
    return video_pipe


def render_preview_clips(video_pipe: AnimateDiffPipeline, settings: TrainingSettings, prompts, stem: Path) -> None:
    """8-frame clips through T2V VCD with the current tokens."""
    from magicme.io.video import save_video
    from magicme.settings import GenerationSettings
    from magicme.t2v.generate import generate

    for index, prompt in enumerate(prompts):
        clip = GenerationSettings(
            prompt=prompt, num_frames=8, height=settings.resolution, width=settings.resolution, seed=settings.seed
        )
        save_video(generate(video_pipe, clip), stem.with_name(f"{stem.name}-{index}.mp4"), fps=clip.fps)


class IdentityTrainer:
    """The frozen model, the K trainable rows, their optimizer and the one generator all randomness uses."""

    def __init__(
        self,
        settings: TrainingSettings,
        masked: list,
        accelerator: Accelerator,
        pipe: StableDiffusionPipeline | None = None,
    ) -> None:
        """`pipe`: an already-built image pipeline to train on (default: load `settings.base_model`)."""
        self.settings, self.masked, self.accelerator = settings, masked, accelerator
        if pipe is None:
            self.pipe = load_training_pipeline(settings, accelerator)
        else:
            self.pipe = prepare_training_pipeline(pipe, settings, accelerator)
        self.tokens = identity_tokens(settings.name, settings.num_tokens)
        self.rows = add_identity_tokens(self.pipe, self.tokens, init_words(settings))
        self.caption = CAPTION.format(tokens=" ".join(self.tokens), class_word=settings.class_word)
        groups = [{"params": list(self.rows.parameters()), "lr": settings.learning_rate}]
        if settings.lora_rank:
            groups.append(
                {"params": add_unet_lora(self.pipe.unet, settings.lora_rank), "lr": settings.lora_learning_rate}
            )
        self.trainable = [parameter for group in groups for parameter in group["params"]]
        self.text_encoder, self.optimizer = accelerator.prepare(self.pipe.text_encoder, torch.optim.AdamW(groups))
        self.unet = accelerator.prepare(self.pipe.unet) if settings.lora_rank else self.pipe.unet
        self.generator = torch.Generator().manual_seed(settings.seed + accelerator.process_index)
        self.latent_cache = LatentCache(self.pipe.vae)
        self.step_count, self.mid_step = 0, False

    def step(self) -> float:
        """One optimisation step; returns its loss. `mid_step` is True while it runs."""
        return step_together([self])[0]

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The UNet LoRA's weights in diffusers' naming, or nothing when none trains."""
        if not self.settings.lora_rank:
            return {}
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(self.accelerator.unwrap_model(self.unet))

    def state(self) -> Checkpoint:
        tensors = {ROWS: self.rows.rows} | {LORA_PREFIX + k: v for k, v in self.lora_state().items()}
        return Checkpoint(self.step_count, tensors, self.optimizer.state_dict(), self.generator.get_state())

    def restore(self, checkpoint: Checkpoint) -> None:
        with torch.no_grad():
            self.rows.rows.copy_(checkpoint.tensors[ROWS])
        if self.settings.lora_rank:
            from peft.utils import set_peft_model_state_dict

            lora = {k.removeprefix(LORA_PREFIX): v for k, v in checkpoint.tensors.items() if k.startswith(LORA_PREFIX)}
            set_peft_model_state_dict(self.accelerator.unwrap_model(self.unet), lora)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.generator.set_state(checkpoint.generator_state)
        self.step_count = checkpoint.step

    def identity(self) -> Identity:
        settings = self.settings
        metadata = {"base_model": settings.base_model, "steps_trained": self.step_count}
        if settings.lora_rank:
            metadata["lora"] = f"{settings.name}.lora.safetensors"
        metadata["training"] = dataclasses.asdict(settings)
        return Identity(settings.name, self.rows.rows.detach().float().cpu(), settings.class_word, metadata)

    def save(self, run_dir: Path) -> Path:
        """Write the identity file (and its LoRA beside it) as they stand now."""
        identity = self.identity()
        if lora_file := identity.metadata.get("lora"):
            save_kohya_lora(self.lora_state(), run_dir / lora_file)
        return save_identity(identity, run_dir / f"{self.settings.name}.safetensors")


def step_together(trainers: list[IdentityTrainer]) -> list[float]:
    """One optimisation step of each trainer, all their samples in one UNet call; their losses.

    The trainers share one frozen model (several identities installed in it). Each draws its
    batch with its own generator and clips and steps its own rows with its own optimizer and
    gradient scaler, and its rows appear only in its own captions, so the gradient of the summed
    scaled losses with respect to its rows is that of its own: each identity learns what it
    learns alone, up to the rounding of a larger batch.
    """
    for trainer in trainers:
        trainer.mid_step = True
    batches = [
        diffusion_inputs(
            t.pipe, draw_batch(t.masked, t.settings, t.caption, t.generator), t.settings, t.generator, t.latent_cache
        )
        for t in trainers
    ]
    first = trainers[0]
    with first.accelerator.autocast():
        losses = batch_losses(first.text_encoder, first.unet, batches, first.pipe.unet.dtype)
    if len(trainers) == 1:
        first.accelerator.backward(losses[0])
    else:  # as `accelerator.backward` does, each loss scaled by its own trainer's fp16 gradient scaler
        scaled = [
            t.accelerator.scaler.scale(loss) if t.accelerator.scaler else loss
            for t, loss in zip(trainers, losses, strict=True)
        ]
        torch.stack(scaled).sum().backward()
    for trainer in trainers:
        trainer.accelerator.clip_grad_norm_(trainer.trainable, trainer.settings.max_grad_norm)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        trainer.step_count += 1
        trainer.mid_step = False
    return [loss.item() for loss in losses]


def train_identity(settings: TrainingSettings) -> Path:
    """Learn an identity (VCD's ID module) from a folder of photos.

    Args:
        settings: the photos, name, class word, base model and the training recipe (reference defaults).

    Returns:
        the path of its magicme identity file; the A1111 `.pt` (and the LoRA, if any) lie beside it.
    """
    return train_identities([settings])[0]


def train_identities(all_settings: list[TrainingSettings]) -> list[Path]:
    """Learn several identities at once on one loaded model, their samples sharing each UNet call
    (`step_together`); each ends as training it alone would, up to rounding. They must share the
    base model, resolution, precision and device, and train no UNet LoRA (the UNet is shared).

    Returns:
        each identity's file, in order.
    """
    check_trainable_together(all_settings)
    # One trainer per run folder (two would interleave checkpoints); under `accelerate launch`,
    # the processes of one run share it, so the first process holds the lock for all.
    with ExitStack() as locks:
        if os.environ.get("RANK", "0") == "0":
            for settings in all_settings:
                locks.enter_context(exclusive(run_folder(settings)))
        return learn_identities(all_settings)


def check_trainable_together(all_settings: list[TrainingSettings]) -> None:
    if len(all_settings) == 1:
        return
    names = [settings.name for settings in all_settings]
    if len(set(names)) < len(names):
        raise SettingError("name", f"identities trained together need different names, got {names}")
    if any(settings.lora_rank for settings in all_settings):
        raise SettingError("lora_rank", "identities trained together share the UNet, so none can train a LoRA on it")
    for shared in ("base_model", "resolution", "mixed_precision", "device", "gradient_checkpointing"):
        values = {getattr(settings, shared) for settings in all_settings}
        if len(values) > 1:
            raise SettingError(shared, f"identities trained together share one model; got {sorted(map(str, values))}")


def start_run(settings: TrainingSettings) -> tuple[Path, list, Accelerator]:
    """Check the settings, write the run folder's settings, and load the photos with their masks."""
    check_training_settings(settings)
    run_dir = run_folder(settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json({"training": dataclasses.asdict(settings)}, run_dir / "run.json")
    accelerator = Accelerator(mixed_precision=resolve_precision(settings), cpu=settings.device == "cpu")
    photos = load_photos(Path(settings.photos), settings.resolution)
    prompt = settings.mask_prompt or settings.class_word
    models = tuple(settings.mask_models)
    masked = prepare_masks(photos, settings.masks, prompt, run_dir / "masks", models, str(accelerator.device))
    sheet = contact_sheet(masked, run_dir / "masks.png")
    log.info("mask contact sheet: %s (check it before trusting the identity)", sheet)
    return run_dir, masked, accelerator


@dataclass
class Run:
    """One identity's trainer, its run folder and its open loss log."""

    trainer: IdentityTrainer
    folder: Path
    losses: TextIO

    def save(self) -> None:
        """A checkpoint to resume from, and the identity file as it stands now."""
        if self.trainer.accelerator.is_main_process:
            save_checkpoint(self.folder, self.trainer.state())
            self.trainer.save(self.folder)

    def after_step(self, loss: float) -> None:
        """Log the step's loss; checkpoint and preview when the settings say so."""
        settings, step = self.trainer.settings, self.trainer.step_count
        if not self.trainer.accelerator.is_main_process:
            return
        self.losses.write(f"{step},{loss:.6f}\n")
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            self.save()
        if settings.validation_every and step % settings.validation_every == 0:
            render_previews(self.trainer.pipe, settings, step, self.folder)


def learn_identities(all_settings: list[TrainingSettings]) -> list[Path]:
    """`train_identities`' work, in run folders this process may write."""
    with ExitStack() as files:
        # 1. Run folders, photos and subject masks; then one model with every identity's K trainable rows
        runs: list[Run] = []
        for settings in all_settings:
            folder, masked, accelerator = start_run(settings)
            shared = runs[0].trainer.pipe if runs else None
            trainer = IdentityTrainer(settings, masked, accelerator, pipe=shared)
            checkpoint = load_latest_checkpoint(folder) if settings.resume else None
            if checkpoint:
                trainer.restore(checkpoint)
                log.info("resuming %s from step %d", folder, checkpoint.step)
            runs.append(
                Run(trainer, folder, files.enter_context((folder / LOSS_LOG).open("a", buffering=1, encoding="utf-8")))
            )

        # 2. The training loop: Ctrl-C finishes the step, then saves checkpoints that resuming continues from
        main = runs[0].trainer.accelerator.is_main_process
        total = sum(run.trainer.settings.steps for run in runs)
        done = sum(run.trainer.step_count for run in runs)
        description = "learning identity" if len(runs) == 1 else f"learning {len(runs)} identities"
        progress = files.enter_context(tqdm(total=total, initial=done, desc=description, disable=not main))
        try:
            with stop_between_steps() as stop_requested:
                while active := [run for run in runs if run.trainer.step_count < run.trainer.settings.steps]:
                    losses = step_together([run.trainer for run in active])
                    progress.update(len(active))
                    progress.set_postfix(loss=" ".join(f"{loss:.4f}" for loss in losses))
                    for run, loss in zip(active, losses, strict=True):
                        run.after_step(loss)
                    if stop_requested():
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            for run in runs:
                step = run.trainer.step_count
                if run.trainer.mid_step:  # stopped at once: the state is half a step, so the last checkpoint stays
                    log.warning("interrupted during step %d; the last checkpoint is kept", step + 1)
                else:
                    run.save()
                    log.warning("interrupted after step %d; checkpoint saved: resuming continues from it", step)
            raise

    # 3. Identity files: magicme's (read by diffusers, A1111 and ComfyUI too) with its LoRA, and the A1111 .pt
    paths = []
    for run in runs:
        paths.append(run.trainer.save(run.folder))
        export_a1111(run.trainer.identity(), run.folder / f"{run.trainer.settings.name}.pt")
    return paths


def resolve_precision(settings: TrainingSettings) -> str:
    if settings.mixed_precision != "auto":
        return settings.mixed_precision
    return "fp16" if torch.cuda.is_available() and settings.device != "cpu" else "no"
