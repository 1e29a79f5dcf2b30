import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from magicme.identity import masks
from magicme.identity.augment import FAR_PREFIXES, NEAR_PREFIXES, augment
from magicme.identity.masks import contact_sheet, make_mask_backend, offline_person_mask, prepare_masks, user_mask
from magicme.identity.photos import Photo


def noise_photo(name: str = "noise.png", seed: int = 0) -> Photo:
    pixels = np.random.default_rng(seed).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    return Photo(Path(name), Image.fromarray(pixels), f"noise{seed}")


def test_offline_fallback_finds_the_astronaut_and_nothing_in_noise(astronaut: Photo) -> None:
    mask = offline_person_mask(astronaut, "woman")
    assert mask[90:150, 200:260].all(), "the face must be inside the subject mask"
    assert not mask[:40, :40].any() and not mask[:, 480:].any(), "the flag and the background are not the subject"
    assert 0.05 < mask.mean() < 0.6
    assert not offline_person_mask(noise_photo(), "woman").any()


def test_user_masks(tmp_path: Path) -> None:
    photo = noise_photo(str(tmp_path / "cat.jpg"))
    with pytest.raises(FileNotFoundError, match=r"expected cat\.mask\.png beside it"):
        user_mask(photo, "cat")
    drawn = np.zeros((128, 128), dtype=np.uint8)
    drawn[32:96, 32:96] = 255
    Image.fromarray(drawn).save(tmp_path / "cat.mask.png")
    mask = user_mask(photo, "cat")
    assert mask.shape == (256, 256) and mask.mean() == pytest.approx(0.25)


@pytest.fixture(scope="module")
def tiny_clipseg(tmp_path_factory) -> Path:
    """A random tiny CLIPSeg with its processor, saved as a local folder."""
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        CLIPTokenizer,
        ViTImageProcessor,
    )

    from magicme.models.loading import CONFIGS

    tower = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    config = CLIPSegConfig(
        text_config={**tower, "vocab_size": 49408},
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=32,
        reduce_dim=16,
        extract_layers=[1],
        decoder_num_attention_heads=2,
    )
    folder = tmp_path_factory.mktemp("clipseg")
    torch.manual_seed(0)
    CLIPSegForImageSegmentation(config).save_pretrained(folder)
    image_processor = ViTImageProcessor(size={"height": 32, "width": 32})
    tokenizer = CLIPTokenizer.from_pretrained(str(CONFIGS / "sd15" / "tokenizer"))
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_clipseg_backend_runs_on_a_tiny_model(tiny_clipseg: Path, astronaut: Photo) -> None:
    mask = make_mask_backend("clipseg", (str(tiny_clipseg),))(astronaut, "woman")
    assert mask.shape == (512, 512) and mask.dtype == bool


def test_none_backend_is_the_whole_photo(astronaut: Photo) -> None:
    assert make_mask_backend("none")(astronaut, "woman").all()


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown mask backend 'sam3'"):
        make_mask_backend("sam3")


def test_prepare_masks_skips_empty_caches_and_explains(tmp_path: Path, astronaut: Photo, monkeypatch, caplog) -> None:
    photos = [astronaut, noise_photo("noise.png")]
    with caplog.at_level(logging.WARNING, logger="magicme"):
        kept = prepare_masks(photos, "offline", "woman", tmp_path / "masks")
    assert [photo.path.name for photo, _ in kept] == ["astronaut.png"]
    assert "skipping noise.png: no 'woman' found in it (empty mask)" in caplog.text

    monkeypatch.setattr(masks, "make_mask_backend", lambda *args: pytest.fail("cached masks must be reused"))
    again = prepare_masks(photos, "offline", "woman", tmp_path / "masks")
    assert np.array_equal(again[0][1], kept[0][1])

    sheet = Image.open(contact_sheet(kept, tmp_path / "masks.png", thumb=64))
    assert sheet.size == (3 * 64, 64)

    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"no photo has a 'woman' mask .* `masks` set to files"):
        prepare_masks([noise_photo("n1.png", 1)], "offline", "woman", tmp_path / "other")


def test_augment_moves_photo_and_mask_together(astronaut: Photo) -> None:
    mask = np.zeros((512, 512), dtype=bool)
    mask[100:300, 150:350] = True
    painted = np.asarray(astronaut.image).copy()
    painted[mask], painted[~mask] = 255, 0  # the photo is its own mask: white subject on black
    prefixes = set()
    for seed in range(12):
        sample = augment(Image.fromarray(painted), mask, 64, torch.Generator().manual_seed(seed))
        assert sample.pixels.shape == (3, 64, 64) and sample.mask.shape == (1, 64, 64)
        white = sample.pixels.mean(dim=0) > 0.5
        agreement = (white == sample.mask[0].bool()).float().mean()
        assert agreement > 0.95, f"seed {seed}: mask and photo moved apart ({agreement:.2f})"
        prefixes.add(sample.caption_prefix)
    assert prefixes & set(FAR_PREFIXES) and prefixes & set(NEAR_PREFIXES)
    same = augment(Image.fromarray(painted), mask, 64, torch.Generator().manual_seed(3))
    again = augment(Image.fromarray(painted), mask, 64, torch.Generator().manual_seed(3))
    assert torch.equal(same.pixels, again.pixels) and same.caption_prefix == again.caption_prefix


@pytest.fixture(scope="module")
def tiny_grounded_sam(tmp_path_factory) -> tuple[Path, Path]:
    """Random tiny GroundingDINO (Swin + BERT) and SAM, with processors, as local folders."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SamConfig,
        SamImageProcessor,
        SamModel,
        SamProcessor,
        SwinConfig,
    )

    detector_dir, sam_dir = tmp_path_factory.mktemp("grounding-dino"), tmp_path_factory.mktemp("sam")
    torch.manual_seed(0)
    swin = SwinConfig(
        embed_dim=8, depths=[1] * 4, num_heads=[1] * 4, window_size=4, image_size=128, out_indices=[2, 3, 4]
    )
    bert = BertConfig(vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    detector = GroundingDinoConfig(
        backbone_config=swin,
        text_config=bert,
        d_model=32,  # GroupNorm(32, d_model) inside
        encoder_layers=1,
        decoder_layers=2,  # the box heads tie layer 0 to the others
        num_queries=10,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
    )
    GroundingDinoForObjectDetection(detector).save_pretrained(detector_dir)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "woman", "person", "dog", "a"]
    (detector_dir / "vocab.txt").write_text("\n".join(words) + "\n")
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 128})
    tokenizer = BertTokenizer(str(detector_dir / "vocab.txt"))
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(detector_dir)

    vision = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16}
    vision |= {"image_size": 64, "patch_size": 8, "output_channels": 16, "global_attn_indexes": [0], "mlp_dim": 16}
    prompt = {"hidden_size": 16, "image_embedding_size": 8, "mask_input_channels": 4, "image_size": 64}
    decoder = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "mlp_dim": 16}
    sam = SamConfig(
        vision_config={**vision, "num_pos_feats": 8},
        prompt_encoder_config={**prompt, "patch_size": 8, "num_point_embeddings": 4},
        mask_decoder_config={**decoder, "iou_head_hidden_dim": 8},
    )
    SamModel(sam).save_pretrained(sam_dir)
    sam_images = SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    SamProcessor(image_processor=sam_images).save_pretrained(sam_dir)
    return detector_dir, sam_dir


def test_grounded_sam_backend_runs_on_tiny_models(tiny_grounded_sam, astronaut: Photo) -> None:
    detector, sam = tiny_grounded_sam
    mask = make_mask_backend("grounded-sam", (str(detector), str(sam)))(astronaut, "woman")
    assert mask.shape == (512, 512) and mask.dtype == bool


def test_grounded_sam_needs_two_models() -> None:
    with pytest.raises(ValueError, match="grounded-sam needs two models"):
        make_mask_backend("grounded-sam", ("only-one",))
