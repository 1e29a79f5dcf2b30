"""The miniature world's text-to-video model: SD-1.5 + AnimateDiff's classes at toy size.

Same classes as the real model (CLIP text encoder, UNet2DConditionModel + MotionAdapter,
AutoencoderKL, DDIM), small enough to train on a 2-core CPU: 64 px frames, a 4x autoencoder
(16 x 16 latents), cross-attention at the two coarse levels, and a CLIP BPE tokenizer whose
vocabulary is the world's words (any other text still tokenizes, into letters). The
trained weights ship in `magicme/assets/world` in the layouts users download, so the demo
runs magicme's real loading, training and generation code on them.
"""

import json
import re
from importlib.resources import files
from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from magicme.identity.augment import FAR_PREFIXES, NEAR_PREFIXES
from magicme.identity.train import CAPTION, GENERIC_INIT_WORDS
from magicme.world import scenes

WORLD_MODEL = files("magicme") / "assets" / "world"
SIZE = 64  # frame side in pixels
FRAMES = 16  # clip length the motion module trains on
TEXT_WIDTH = 64
BLOCKS = (48, 96, 96)
SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def world_words() -> list[str]:
    """Every word of the world's captions and of the ID module's captions and initial words."""
    texts = [
        scenes.caption(scenes.character(i), s, d) for i in range(8) for s in scenes.SCENES for d in scenes.DISTANCES
    ]
    everyone = [scenes.character(i) for i in range(scenes.BASE_IDENTITIES)]
    texts += [" ".join(scenes.trait_phrases(who, adjectives)) for who in everyone for adjectives in (False, True)]
    texts += [*FAR_PREFIXES, *NEAR_PREFIXES, CAPTION, *GENERIC_INIT_WORDS, "walking running skin head"]
    for names in (
        scenes.SCENES,
        scenes.HAIRS,
        scenes.EYES,
        scenes.SKINS,
        scenes.HEADS,
        scenes.ACCESSORIES,
        scenes.MOTIONS,
    ):
        texts.append(" ".join(names))
    words = {word for text in texts for word in re.findall("[a-z]+", text)}
    return sorted(words - {"tokens", "class_word"})


def write_world_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer (vocab.json, merges.txt) in which every world word is one token."""
    alphabet = sorted(ByteLevel.alphabet())
    merges: list[tuple[str, str]] = []
    for word in world_words():
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    for _ in range(10):  # a merge learned for one word can split another: join what is left, until none is
        tokenizer = _save_tokenizer(folder, alphabet, list(dict.fromkeys(merges)))
        split = {word: tokenizer.tokenize(word) for word in world_words()}
        split = {word: pieces for word, pieces in split.items() if len(pieces) > 1}
        if not split:
            return tokenizer
        for pieces in split.values():
            while len(pieces) > 1:
                merges.append((pieces[0], pieces[1]))
                pieces = [pieces[0] + pieces[1], *pieces[2:]]
    raise RuntimeError(f"could not make single tokens of {sorted(split)}")


def _save_tokenizer(folder: Path, alphabet: list[str], merges: list[tuple[str, str]]) -> CLIPTokenizer:
    vocab = [*alphabet, *(c + "</w>" for c in alphabet), *dict.fromkeys(a + b for a, b in merges), *SPECIALS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=SPECIALS[1], model_max_length=77
    )


def build_world_pipeline(tokenizer: CLIPTokenizer) -> StableDiffusionPipeline:
    """The untrained image model: SD-1.5's layout and scheduler at the world's size."""
    unet = UNet2DConditionModel(
        sample_size=SIZE // 4,
        block_out_channels=BLOCKS,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64, 64),  # three blocks: downsamples by 4
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=SIZE,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_WIDTH,
            intermediate_size=4 * TEXT_WIDTH,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(  # SD-1.5's
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_world_motion_adapter() -> MotionAdapter:
    return MotionAdapter(
        block_out_channels=BLOCKS,
        motion_layers_per_block=1,
        motion_norm_num_groups=16,
        motion_num_attention_heads=4,
        motion_max_seq_length=32,
    )


def world_model_paths(folder: Path | None = None) -> tuple[Path, Path]:
    """(base folder, motion adapter folder) of a trained world model; the shipped one by default."""
    root = Path(str(WORLD_MODEL)) if folder is None else Path(folder)
    base, motion = root / "base", root / "motion_adapter"
    if not (base / "model_index.json").is_file() or not (motion / "config.json").is_file():
        raise FileNotFoundError(f"no trained world model in {root}; train one with scripts/train_world.py")
    return base, motion
