import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magicme.identity.photos import PhotoError, load_photos

SIZE = 128


def rgb(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """Photos as people have them: every mode, EXIF rotation, odd sizes, junk and duplicates."""
    rotated = rgb(200, 150, 1)
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    rgb(160, 160, 2).convert("RGBA").save(tmp_path / "rgba.png")
    gray_alpha = np.full((140, 140, 2), 200, dtype=np.uint8)
    gray_alpha[:, :70, 1], gray_alpha[:, 70:, 1] = 0, 255  # left transparent, right opaque
    Image.fromarray(gray_alpha, mode="LA").save(tmp_path / "la.png")
    palette = rgb(150, 150, 3).convert("P")
    palette.save(tmp_path / "palette.png", transparency=0)
    rgb(150, 170, 4).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.full((150, 150), 40000, dtype=np.uint16)).save(tmp_path / "sixteen.png")
    rgb(150, 150, 5).convert("L").save(tmp_path / "gray.png")
    (tmp_path / "gray_copy.png").write_bytes((tmp_path / "gray.png").read_bytes())
    rgb(1000, 700, 6).save(tmp_path / "big.jpg")
    rgb(100, 100, 7).save(tmp_path / "medium.png")
    rgb(40, 40, 8).save(tmp_path / "tiny.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "notes.txt").write_text("shopping list")
    rgb(150, 150, 9).save(tmp_path / "rgba.mask.png")
    return tmp_path


def test_messy_folder_loads_what_can_be_used(messy_folder: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="magicme"):
        photos = {photo.path.name: photo for photo in load_photos(messy_folder, SIZE)}
    assert set(photos) == {"rotated.jpg", "rgba.png", "la.png", "palette.png", "cmyk.jpg", "sixteen.png"} | {
        "gray.png",
        "big.jpg",
        "medium.png",
    }
    assert all(photo.image.mode == "RGB" for photo in photos.values())
    assert photos["rotated.jpg"].image.size == (150, 200), "EXIF orientation must be applied"
    assert min(photos["big.jpg"].image.size) == 2 * SIZE, "very large photos are downscaled"
    assert np.asarray(photos["sixteen.png"].image).mean() == pytest.approx(40000 / 65535 * 255, abs=1)
    composited = np.asarray(photos["la.png"].image)
    assert (composited[:, :70] == 255).all() and (composited[:, 70:] == 200).all(), "transparency becomes white"

    log = caplog.text
    assert "tiny.png: 40x40 is too small; at least 64 px a side" in log
    assert "medium.png is 100x100, below the training size 128" in log
    assert "broken.jpg: not a readable image" in log
    assert "notes.txt: not a readable image" in log
    assert "gray_copy.png: duplicate of gray.png" in log


def test_no_usable_photo_is_an_error_listing_each_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("no")
    rgb(20, 20, 0).save(tmp_path / "b.png")
    with pytest.raises(PhotoError, match=r"no usable photo .*a.txt: not a readable image.*b.png: 20x20 is too small"):
        load_photos(tmp_path, SIZE)


def test_missing_folder_and_few_photos(tmp_path: Path, caplog) -> None:
    with pytest.raises(PhotoError, match="does not exist"):
        load_photos(tmp_path / "nope", SIZE)
    rgb(150, 150, 0).save(tmp_path / "one.png")
    with caplog.at_level(logging.WARNING, logger="magicme"):
        assert len(load_photos(tmp_path, SIZE)) == 1
    assert "only 1 usable photo(s); 3 to 20" in caplog.text


def test_a_decompression_bomb_among_good_photos_is_skipped_with_a_message(tmp_path: Path, caplog) -> None:
    for seed in range(3):
        rgb(160, 160, seed).save(tmp_path / f"good{seed}.png")
    Image.new("1", (15000, 15000)).save(tmp_path / "bomb.png")  # 225 M pixels in a few kB
    with caplog.at_level(logging.WARNING, logger="magicme"):
        photos = load_photos(tmp_path, SIZE)
    assert sorted(photo.path.name for photo in photos) == ["good0.png", "good1.png", "good2.png"]
    assert "bomb.png: too many pixels to decode safely" in caplog.text
