"""Prompt-to-segmentation: a subject mask per photo, so the ID tokens learn the subject only.

A backend is any callable `(photo, prompt) -> bool array (H, W)`. Built in:
- `grounded-sam`: GroundingDINO boxes for the prompt, then SAM masks inside them (the
  reference's choice), both through transformers;
- `clipseg`: CLIPSeg's text-prompted segmentation (lighter, coarser);
- `offline`: OpenCV's bundled face detectors and GrabCut, for people and cats; needs no hub;
- `files`: the user's own masks, `photo.mask.png` beside `photo.jpg`;
- `none`: the whole photo (plain textual inversion, for ablations).
"""

import json
import logging
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from magicme.detection import CAT_FACE, HUMAN_FACE, haar_faces
from magicme.identity.photos import Photo
from magicme.io.files import atomic_path, write_json
from magicme.settings import MASK_BACKENDS

log = logging.getLogger("magicme")

MaskBackend = Callable[[Photo, str], np.ndarray]
DEFAULT_MODELS = {
    "grounded-sam": ("IDEA-Research/grounding-dino-tiny", "facebook/sam-vit-base"),
    "clipseg": ("CIDAS/clipseg-rd64-refined",),
}


def whole_photo_mask(photo: Photo, prompt: str) -> np.ndarray:
    return np.ones((photo.image.height, photo.image.width), dtype=bool)


def user_mask(photo: Photo, prompt: str) -> np.ndarray:
    """The user's `photo.mask.png`: white (or any non-zero gray) is the subject."""
    if not photo.mask_path.is_file():
        raise FileNotFoundError(f"no mask for {photo.path.name}: expected {photo.mask_path.name} beside it")
    mask = Image.open(photo.mask_path).convert("L").resize(photo.image.size, Image.Resampling.NEAREST)
    return np.asarray(mask) > 127


def offline_person_mask(photo: Photo, prompt: str) -> np.ndarray:
    """Face (human, else cat) from OpenCV's Haar cascades, grown to head and shoulders, cut by GrabCut."""
    import cv2

    pixels = np.asarray(photo.image)
    for cascade in (HUMAN_FACE, CAT_FACE):
        faces = haar_faces(pixels, cascade, min_share=12, min_side=24)
        if faces:
            break
    else:
        return np.zeros(pixels.shape[:2], dtype=bool)
    x, y, w, h = max(faces, key=lambda box: box[2] * box[3])  # the largest face is the subject
    height, width = pixels.shape[:2]
    left, right = max(0, x - 3 * w // 2), min(width, x + 5 * w // 2)
    top, bottom = max(0, y - h // 2), min(height, y + 4 * h)
    grabcut = np.full((height, width), cv2.GC_BGD, dtype=np.uint8)
    grabcut[top:bottom, left:right] = cv2.GC_PR_FGD
    grabcut[y : y + h, x : x + w] = cv2.GC_FGD
    background, foreground = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)  # GrabCut's k-means draws from OpenCV's global RNG: same photo, same mask
    cv2.grabCut(pixels[..., ::-1].copy(), grabcut, None, background, foreground, 5, cv2.GC_INIT_WITH_MASK)
    return np.isin(grabcut, (cv2.GC_FGD, cv2.GC_PR_FGD))


@torch.no_grad()
def clipseg_mask(photo: Photo, prompt: str, model, processor, threshold: float = 0.4) -> np.ndarray:
    inputs = processor(text=[prompt], images=[photo.image], return_tensors="pt", padding=True).to(model.device)
    logits = model(**inputs).logits.reshape(1, 1, *inputs["pixel_values"].shape[-2:])
    size = (photo.image.height, photo.image.width)
    probability = torch.nn.functional.interpolate(logits.sigmoid().float(), size=size, mode="bilinear")
    return (probability[0, 0] > threshold).cpu().numpy()


@torch.no_grad()
def grounded_sam_mask(photo: Photo, prompt: str, detector, detector_processor, sam, sam_processor) -> np.ndarray:
    """GroundingDINO finds boxes for the prompt; SAM cuts each box; the mask is their union."""
    text = prompt.lower().strip().rstrip(".") + "."  # GroundingDINO expects lower-case phrases ending in '.'
    inputs = detector_processor(images=photo.image, text=text, return_tensors="pt").to(detector.device)
    outputs = detector(**inputs)
    size = [(photo.image.height, photo.image.width)]
    found = detector_processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=0.3, text_threshold=0.25, target_sizes=size
    )[0]
    if len(found["boxes"]) == 0:
        return np.zeros(size[0], dtype=bool)
    boxes = [found["boxes"].tolist()]
    sam_inputs = sam_processor(images=photo.image, input_boxes=boxes, return_tensors="pt").to(sam.device)
    masks = sam_processor.image_processor.post_process_masks(
        sam(**sam_inputs, multimask_output=False).pred_masks.cpu(),
        sam_inputs["original_sizes"].cpu(),
        sam_inputs["reshaped_input_sizes"].cpu(),
    )[0]  # (boxes, 1, H, W)
    return masks.any(dim=0)[0].numpy()


def make_mask_backend(name: str, models: tuple[str, ...] = (), device: str = "cpu") -> MaskBackend:
    """Build a backend by name; `models` overrides the hub ids (local folders work)."""
    if name not in MASK_BACKENDS:
        raise ValueError(f"unknown mask backend {name!r}; choose one of {MASK_BACKENDS}")
    if name == "none":
        return whole_photo_mask
    if name == "files":
        return user_mask
    if name == "offline":
        return offline_person_mask
    ids = models or DEFAULT_MODELS[name]
    if name == "clipseg":
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        model = CLIPSegForImageSegmentation.from_pretrained(ids[0]).to(device).eval()
        return partial(clipseg_mask, model=model, processor=CLIPSegProcessor.from_pretrained(ids[0]))
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, SamModel, SamProcessor

    if len(ids) != 2:
        raise ValueError("grounded-sam needs two models: a GroundingDINO and a SAM (id or folder each)")
    detector = AutoModelForZeroShotObjectDetection.from_pretrained(ids[0]).to(device).eval()
    sam = SamModel.from_pretrained(ids[1]).to(device).eval()
    return partial(
        grounded_sam_mask,
        detector=detector,
        detector_processor=AutoProcessor.from_pretrained(ids[0]),
        sam=sam,
        sam_processor=SamProcessor.from_pretrained(ids[1]),
    )


def prepare_masks(
    photos: list[Photo], backend: str, prompt: str, folder: Path, models: tuple[str, ...] = (), device: str = "cpu"
) -> list[tuple[Photo, np.ndarray]]:
    """Mask every photo once (cached in `folder` by photo content, backend and prompt).

    Photos whose mask comes out empty are skipped with a message; if none is left,
    that is an error saying what to try instead.
    """
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    make_backend = lru_cache(maxsize=1)(lambda: make_mask_backend(backend, models, device))
    kept = []
    for photo in photos:
        key, cached = f"{backend}|{prompt}|{photo.digest}", folder / f"{photo.path.stem}.png"
        if index.get(photo.path.name) == key and cached.is_file():
            mask = np.asarray(Image.open(cached)) > 127
        else:
            mask = make_backend()(photo, prompt)
            with atomic_path(cached) as partial:
                Image.fromarray(mask.astype(np.uint8) * 255).save(partial, format="PNG")
            index[photo.path.name] = key
        if not mask.any():
            log.warning("skipping %s: no %r found in it (empty mask)", photo.path.name, prompt)
            continue
        kept.append((photo, mask))
    write_json(index, index_path)
    if not kept:
        raise ValueError(
            f"no photo has a {prompt!r} mask from the {backend} backend; try another `mask_prompt`, "
            "another `masks` backend, or your own masks as NAME.mask.png with `masks` set to files"
        )
    return kept


def contact_sheet(masked: list[tuple[Photo, np.ndarray]], path: Path, thumb: int = 192) -> Path:
    """One row per photo: photo | mask | masked photo, for checking masks before training."""
    sheet = Image.new("RGB", (3 * thumb, thumb * len(masked)), (255, 255, 255))
    for row, (photo, mask) in enumerate(masked):
        pixels = np.asarray(photo.image)
        views = [pixels, np.repeat(mask[..., None] * 255, 3, axis=2), pixels * mask[..., None]]
        for column, view in enumerate(views):
            tile = ImageOps.contain(Image.fromarray(view.astype(np.uint8)), (thumb, thumb))
            sheet.paste(tile, (column * thumb, row * thumb))
    with atomic_path(path) as partial:
        sheet.save(partial, format="PNG")
    return path
