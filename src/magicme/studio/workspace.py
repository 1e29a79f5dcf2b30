"""The studio's workspace: one folder holding identities, renders and the chosen model.

    WORKSPACE/identities/NAME/          a training run folder, as `magicme train` writes it
    WORKSPACE/identities/NAME/photos/   the photos it learns from (checked on upload)
    WORKSPACE/renders/STAMP/            a `magicme run` chain folder, with `request.json`
    WORKSPACE/model.json                the model the page last used

Everything the page shows is read back from these folders, so a reload or a restart loses
nothing finished. Names and uploads come from a browser, so they are untrusted: names are
checked against one pattern, photos are decoded as training decodes them, identity files are
read without unpickling, and only paths inside the workspace are ever handed out.
"""

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from magicme.identity.files import convert_identity, export_a1111, load_identity, save_identity
from magicme.identity.photos import MASK_SUFFIX, open_photo
from magicme.identity.train import LOSS_LOG
from magicme.io.files import write_json
from magicme.io.locks import exclusive

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,39}")
MAX_PHOTOS = 20
MIN_PHOTOS = 3
MAX_UPLOAD_BYTES = 30 * 2**20
EXPORTS = {"magicme (.safetensors)": ".safetensors", "A1111 / ComfyUI (.pt)": ".pt", "diffusers (.bin)": ".bin"}


def checked_name(name: str) -> str:
    """An identity name as prompts use it (`<name>`, lower case as CLIP reads it): letters, digits, `_` and
    `-`, nothing that walks paths."""
    name = (name or "").strip().strip("<>").lower()
    if not NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a usable name: use 1 to 40 letters, digits, '_' or '-' (e.g. alice)")
    return name


@dataclass
class IdentityEntry:
    name: str
    file: Path
    class_word: str
    photos: Path | None  # None for an uploaded identity file: no references to score against
    preview: Path | None


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        for folder in ("identities", "renders"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    # Paths -------------------------------------------------------------------------------------
    def inside(self, path: Path | str) -> Path:
        """`path` resolved, refused unless it lies inside the workspace: the only files the page serves."""
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.root):
            raise ValueError(f"{path} is outside the workspace {self.root}")
        return resolved

    def identity_folder(self, name: str) -> Path:
        return self.root / "identities" / checked_name(name)

    # Identities --------------------------------------------------------------------------------
    def add_photos(self, name: str, uploads: list[Path], size: int) -> tuple[Path, list[str]]:
        """Copy the usable photos (and `*.mask.png` masks) into the identity's photo folder.

        Returns the folder and one message per rejected file; fewer than MIN_PHOTOS usable photos,
        or more than MAX_PHOTOS, is an error and keeps nothing.
        """
        folder = self.identity_folder(name) / "photos"
        accepted: list[tuple[Path, str]] = []
        rejected: list[str] = []
        for upload in uploads:
            upload = Path(upload)
            target = safe_file_name(upload.name)
            problem = photo_problem(upload, size, is_mask=upload.name.endswith(MASK_SUFFIX))
            if problem:
                rejected.append(f"{target}: {problem}")
            else:
                accepted.append((upload, target))
        photos = [target for _, target in accepted if not target.endswith(MASK_SUFFIX)]
        if not MIN_PHOTOS <= len(photos) <= MAX_PHOTOS:
            detail = f" ({'; '.join(rejected)})" if rejected else ""
            raise ValueError(
                f"{len(photos)} usable photo(s){detail}: give {MIN_PHOTOS} to {MAX_PHOTOS} varied photos of the subject"
            )
        given = {target: upload.read_bytes() for upload, target in accepted}
        if folder.exists():
            kept = {path.name: path.read_bytes() for path in folder.iterdir()}
            if kept != given:  # training again must not quietly mix two subjects in one run folder
                raise ValueError(
                    f"an identity <{folder.parent.name}> exists with other photos; delete it or choose another name"
                )
            return folder, rejected  # the same photos: training again continues the same run
        folder.mkdir(parents=True)
        for target, content in given.items():
            (folder / target).write_bytes(content)
        return folder, rejected

    def identities(self) -> list[IdentityEntry]:
        """Every identity whose file is written, newest first."""
        found = []
        for folder in (self.root / "identities").iterdir():
            file = folder / f"{folder.name}.safetensors"
            if NAME.fullmatch(folder.name) and file.is_file():
                found.append(self.entry(folder.name))
        return sorted(found, key=lambda entry: entry.file.stat().st_mtime, reverse=True)

    def entry(self, name: str) -> IdentityEntry:
        folder = self.identity_folder(name)
        file = folder / f"{folder.name}.safetensors"
        if not file.is_file():
            raise ValueError(f"unknown identity <{name}>: train it or upload its file first")
        identity = load_identity(file)
        previews = sorted((folder / "previews").glob("*.png"))
        preview = previews[-1] if previews else (folder / "masks.png" if (folder / "masks.png").is_file() else None)
        photos = folder / "photos"
        references = photos if photos.is_dir() else None
        return IdentityEntry(folder.name, file, identity.class_word or "person", references, preview)

    def import_identity(self, upload: Path, name: str | None = None, class_word: str | None = None) -> IdentityEntry:
        """An identity file someone else trained (any layout magicme reads; pickles are read without code).
        A1111 and diffusers files keep no class word: give it, or it stays `person`."""
        upload = Path(upload)
        if upload.stat().st_size > MAX_UPLOAD_BYTES:
            raise ValueError(f"{upload.name} is over {MAX_UPLOAD_BYTES // 2**20} MB; an identity file is a few KB")
        identity = load_identity(upload)
        identity.name = checked_name(name or identity.name)
        identity.class_word = (class_word or "").strip() or identity.class_word
        if identity.lora:
            raise ValueError(f"{upload.name} needs its LoRA file too; upload a file trained without one")
        folder = self.identity_folder(identity.name)
        if folder.exists():
            raise ValueError(f"an identity <{identity.name}> exists already; delete it first or give another name")
        folder.mkdir(parents=True)
        save_identity(identity, folder / f"{identity.name}.safetensors")
        export_a1111(identity, folder / f"{identity.name}.pt")
        return self.entry(identity.name)

    def export(self, name: str, suffix: str) -> Path:
        """The identity in another tool's layout, written under its folder's `exports/`."""
        entry = self.entry(name)
        return convert_identity(entry.file, entry.file.parent / "exports" / f"{entry.name}{suffix}")

    def delete_identity(self, name: str) -> None:
        folder = self.identity_folder(name)
        if not folder.is_dir():
            raise ValueError(f"unknown identity <{name}>")
        with exclusive(folder):  # refused while it trains
            shutil.rmtree(folder)

    def losses(self, name: str) -> list[tuple[int, float]]:
        """The training loss by step so far (the last value of a step redone after a resume)."""
        log = self.identity_folder(name) / LOSS_LOG
        by_step: dict[int, float] = {}
        if log.is_file():
            for line in log.read_text(encoding="utf-8").splitlines():
                step, _, loss = line.partition(",")
                if step.isdigit() and loss:
                    by_step[int(step)] = float(loss)
        return sorted(by_step.items())

    # Renders -----------------------------------------------------------------------------------
    def new_render(self, request: dict[str, Any]) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = self.root / "renders" / f"{stamp}-seed{request['seed']}"
        index = 1
        while folder.exists():
            index += 1
            folder = folder.with_name(f"{stamp}-seed{request['seed']}-{index}")
        folder.mkdir(parents=True)
        write_json(request, folder / "request.json")
        return folder

    def renders(self) -> list[tuple[Path, dict[str, Any]]]:
        """Past renders with a finished video, newest first, each with the request that made it."""
        found = []
        for folder in sorted((self.root / "renders").iterdir(), reverse=True):
            request = folder / "request.json"
            if request.is_file() and any(folder.glob("*.mp4")):
                found.append((folder, json.loads(request.read_text(encoding="utf-8"))))
        return found

    # The model ---------------------------------------------------------------------------------
    def model_choice(self) -> dict[str, Any]:
        path = self.root / "model.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def remember_model(self, choice: dict[str, Any]) -> None:
        write_json(choice, self.root / "model.json")


def photo_problem(path: Path, size: int, is_mask: bool = False) -> str | None:
    """Why an uploaded photo cannot be used (as training would find it), or None."""
    try:
        if path.stat().st_size > MAX_UPLOAD_BYTES:
            return f"over {MAX_UPLOAD_BYTES // 2**20} MB"
        if is_mask:
            with Image.open(path) as mask:
                mask.verify()
            return None
        image = open_photo(path, size)
    except Image.DecompressionBombError:
        return "too many pixels to decode safely"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "not a readable image (JPEG, PNG or WebP)"
    if min(image.size) < size // 2:
        return f"{image.width}x{image.height} is too small; at least {size // 2} px a side"
    return None


def safe_file_name(name: str) -> str:
    """An uploaded file's name made harmless: no folders, no leading dot, only plain characters."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(name).name).lstrip(".")[-80:] or "upload"
