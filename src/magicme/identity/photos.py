"""Reading the photos an identity is learned from, as people actually have them.

Handles EXIF rotation, every common pixel mode (RGBA, LA, P, CMYK, 16-bit, grayscale),
very large photos (downscaled while decoding), photos too small to train on, files that
are not images, and duplicates. Problems with single files are logged and the file is
skipped; only having no usable photo at all is an error.
"""

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger("magicme")

MASK_SUFFIX = ".mask.png"
MAX_SIDE_FACTOR = 2  # keep at most twice the training size on the short side


class PhotoError(ValueError):
    """No usable photo: the message says which files were tried and why each failed."""


@dataclass
class Photo:
    path: Path
    image: Image.Image  # RGB
    digest: str  # sha256 of the decoded pixels: finds duplicates, keys cached masks

    @property
    def mask_path(self) -> Path:
        """Where a user-supplied mask for this photo lives: `alice1.jpg` -> `alice1.mask.png`."""
        return self.path.with_name(self.path.stem + MASK_SUFFIX)


def find_photo_files(source: Path | list[Path]) -> list[Path]:
    """The photo files of a folder (sorted, masks excluded), or the given list as is."""
    if isinstance(source, list):
        return [Path(p) for p in source]
    source = Path(source)
    if not source.is_dir():
        raise PhotoError(f"photo folder {source} does not exist")
    return sorted(p for p in source.iterdir() if p.is_file() and not p.name.endswith(MASK_SUFFIX))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency becomes white, 16-bit is scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if pixels.max() > 255 else 255.0
        image = Image.fromarray((pixels / peak * 255).round().astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def open_photo(path: Path, size: int) -> Image.Image:
    """Decode, upright by EXIF, convert to RGB and bound the short side to `2 * size`."""
    with Image.open(path) as image:
        image.draft("RGB", (size * MAX_SIDE_FACTOR, size * MAX_SIDE_FACTOR))  # JPEG: decode already reduced
        image = ImageOps.exif_transpose(image)
        image.load()
    image = to_rgb(image)
    limit = size * MAX_SIDE_FACTOR
    if min(image.size) > limit:
        scale = limit / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    return image


def load_photos(source: Path | list[Path], size: int = 512) -> list[Photo]:
    """Usable photos for training at `size` pixels; problems are logged per file."""
    photos: list[Photo] = []
    seen: dict[str, Path] = {}
    problems: list[str] = []
    for path in find_photo_files(source):
        try:
            image = open_photo(path, size)
        except Image.DecompressionBombError:
            problems.append(f"{path.name}: too many pixels to decode safely (a decompression bomb?)")
            continue
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            problems.append(f"{path.name}: not a readable image ({error.__class__.__name__})")
            continue
        if min(image.size) < size // 2:
            problems.append(f"{path.name}: {image.width}x{image.height} is too small; at least {size // 2} px a side")
            continue
        if min(image.size) < size:
            log.warning("%s is %dx%d, below the training size %d: it will be upscaled", path.name, *image.size, size)
        digest = hashlib.sha256(image.tobytes()).hexdigest()
        if digest in seen:
            problems.append(f"{path.name}: duplicate of {seen[digest].name}")
            continue
        seen[digest] = path
        photos.append(Photo(path, image, digest))
    for problem in problems:
        log.warning("skipping %s", problem)
    if not photos:
        tried = "; ".join(problems) or "no files found"
        raise PhotoError(f"no usable photo in {source}: {tried}")
    if len(photos) < 3:
        log.warning("only %d usable photo(s); 3 to 20 varied photos learn an identity much better", len(photos))
    return photos
