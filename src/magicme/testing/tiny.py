"""A tiny, randomly initialised SD-1.5 + AnimateDiff model built offline in seconds.

Same classes as the real model at toy sizes, with SD-1.5's real CLIP tokenizer, saved in
the layouts users download (a diffusers SD folder and a motion-adapter folder), so the
demo and the tests run magicme's real loading and generation code. Its output is noise
shaped by untrained weights: it shows that the pipeline runs, not image quality.
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from magicme.models.loading import CONFIGS

TEXT_WIDTH = 32
BLOCKS = (16, 32)


def build_tiny_model(seed: int = 0) -> tuple[StableDiffusionPipeline, MotionAdapter]:
    """Build the tiny image pipeline and motion adapter, with weights fixed by `seed`."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=BLOCKS,
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),  # four blocks: downsamples by 8 like SD's VAE
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=TEXT_WIDTH,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=TEXT_WIDTH,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
    )
    adapter = MotionAdapter(
        block_out_channels=BLOCKS,
        motion_layers_per_block=2,
        motion_norm_num_groups=8,
        motion_num_attention_heads=2,
        motion_max_seq_length=32,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(CONFIGS / "sd15" / "tokenizer")),
        unet=unet,
        scheduler=DDIMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False, steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe, adapter


def save_tiny_model(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the tiny model as `folder/base` (SD layout) and `folder/motion_adapter`; reuse if present."""
    base, motion = Path(folder) / "base", Path(folder) / "motion_adapter"
    if not (base / "model_index.json").is_file() or not (motion / "config.json").is_file():
        pipe, adapter = build_tiny_model(seed)
        pipe.save_pretrained(base)
        adapter.save_pretrained(motion)
    return base, motion
