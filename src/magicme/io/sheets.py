"""Contact sheets: rows of images in one PNG, to see a whole clip, or every stage of one, at a glance."""

from pathlib import Path

import numpy as np
from PIL import Image

from magicme.io.files import atomic_path


def image_grid(rows: list[list[np.ndarray]], path: Path, thumb: int = 96) -> Path:
    """Write rows of (H, W, 3) uint8 images as a PNG, each a `thumb` square (nearest: pixels stay visible)."""
    sheet = Image.new("RGB", (thumb * max(map(len, rows)), thumb * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            tile = Image.fromarray(image).resize((thumb, thumb), Image.Resampling.NEAREST)
            sheet.paste(tile, (x * thumb, y * thumb))
    with atomic_path(path) as partial:
        sheet.save(partial, format="PNG")
    return path
