"""`magicme eval`: the paper's identity, prompt and temporal metrics for videos, as JSON and a table."""

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from magicme.eval.encoders import clip_encoders, dino_encoder
from magicme.eval.metrics import (
    dynamic_degree,
    flicker,
    similarity_to_references,
    summary,
    temporal_consistency,
)
from magicme.identity.files import PLACEHOLDER
from magicme.identity.photos import load_photos
from magicme.io.files import atomic_path, write_json
from magicme.io.video import read_video, to_uint8
from magicme.registry import face_embedder
from magicme.settings import EvalSettings

TABLE_COLUMNS = {
    "face_similarity.mean": "FaceSim",
    "face_similarity.min": "FaceSim min",
    "face_detection_rate": "face found",
    "clip_i": "CLIP-I",
    "dino": "DINO",
    "clip_t": "CLIP-T",
    "temporal_consistency": "temporal",
    "flicker": "flicker",
    "dynamic_degree": "motion px/frame",
}


@dataclass
class Entry:
    """One video to score: its prompt, the identity's reference photos and class word."""

    video: Path
    prompt: str
    references: Path
    class_word: str | None = None


def prompt_for_clip(prompt: str, class_word: str | None) -> str:
    """CLIP has never seen `<alice>`: 'a photo of <alice> woman' -> 'a photo of woman'."""
    word = class_word or "person"
    text = PLACEHOLDER.sub(lambda match: "" if prompt[match.end() :].lstrip().startswith(word) else word, prompt)
    return re.sub(r"\s+", " ", text).strip()


class Evaluator:
    """The encoders, loaded once, and the reference embeddings of each identity, computed once."""

    def __init__(self, settings: EvalSettings) -> None:
        self.settings = settings
        none = settings.clip_model == "none"
        self.clip_images, self.clip_texts = (
            (None, None) if none else clip_encoders(settings.clip_model, settings.device)
        )
        self.dino = None if settings.dino_model == "none" else dino_encoder(settings.dino_model, settings.device)
        self.face = face_embedder(settings.face_model, settings.device)
        self._references: dict[Path, dict[str, Any]] = {}

    def references(self, folder: Path) -> dict[str, Any]:
        if not (self.clip_images or self.dino or self.face):  # motion scores only: no photo is compared
            return {"clip": None, "dino": None, "faces": None}
        if folder not in self._references:
            images = [np.asarray(photo.image) for photo in load_photos(folder, size=64)]
            faces = [face for face in map(self.face, images) if face is not None] if self.face else []
            self._references[folder] = {
                "clip": self.clip_images(images) if self.clip_images else None,
                "dino": self.dino(images) if self.dino else None,
                "faces": torch.stack(faces) if faces else None,
            }
        return self._references[folder]

    def evaluate(self, entry: Entry) -> dict[str, Any]:
        frames = read_video(entry.video)  # (F, 3, H, W)
        images = list(to_uint8(frames))
        references = self.references(entry.references)
        result: dict[str, Any] = {"video": str(entry.video), "prompt": entry.prompt, "frames": len(images)}
        result |= {"flicker": flicker(frames), "dynamic_degree": dynamic_degree(frames)}
        if self.clip_images:
            clip = self.clip_images(images)
            clip_prompt = prompt_for_clip(entry.prompt, entry.class_word)
            result["clip_i"] = float(similarity_to_references(clip, references["clip"]).mean())
            result["clip_t"] = float(similarity_to_references(clip, self.clip_texts([clip_prompt])).mean())
            result |= {"clip_t_prompt": clip_prompt, "temporal_consistency": temporal_consistency(clip)}
        if self.dino:
            result["dino"] = float(similarity_to_references(self.dino(images), references["dino"]).mean())
        if self.face:
            result |= self._face_scores(images, references["faces"], entry)
        return result

    def _face_scores(self, images: list[np.ndarray], references: torch.Tensor | None, entry: Entry) -> dict:
        if references is None:
            raise ValueError(f"no face found in any reference photo in {entry.references}; set `face_model` to none")
        per_frame: list[float | None] = []
        for image in images:
            face = self.face(image)
            per_frame.append(None if face is None else float(similarity_to_references(face[None], references)[0]))
        stats = summary(per_frame)
        return {
            "face_similarity": stats,
            "face_similarity_per_frame": per_frame,
            "face_detection_rate": stats["frames_scored"] / max(1, stats["frames"]),
        }


def _lookup(result: dict[str, Any], dotted: str) -> Any:
    value: Any = result
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per video, one column per metric that was measured."""
    columns = [key for key in TABLE_COLUMNS if any(_lookup(r, key) is not None for r in results)]
    lines = ["| video | " + " | ".join(TABLE_COLUMNS[c] for c in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for result in results:
        cells = [_lookup(result, c) for c in columns]
        text = ["n/a" if v is None else f"{v:.3f}" for v in cells]
        lines.append(f"| {Path(result['video']).name} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def plot_face_similarity(results: list[dict[str, Any]], path: Path, size: tuple[int, int] = (640, 360)) -> Path:
    """A PNG of face similarity per frame, one line per video; frames without a face leave gaps."""
    width, height = size
    margin = 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((margin, margin // 2, width - margin // 2, height - margin), outline="black")
    draw.text((4, margin // 2), "1.0", fill="black")
    draw.text((4, height - margin - 10), "0.0", fill="black")
    draw.text((width // 2 - 60, height - margin + 12), "frame -> face similarity", fill="black")
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    for index, result in enumerate(results):
        scores = result.get("face_similarity_per_frame") or []
        span = max(1, len(scores) - 1)
        points = [
            (margin + (width - 1.5 * margin) * f / span, height - margin - (height - 1.5 * margin) * max(0.0, s))
            if s is not None
            else None
            for f, s in enumerate(scores)
        ]
        color = colors[index % len(colors)]
        draw.text((margin + 6, margin // 2 + 4 + 12 * index), Path(result["video"]).name, fill=color)
        for a, b in itertools.pairwise(points):
            if a and b:
                draw.line((a, b), fill=color, width=2)
        for point in filter(None, points):
            draw.ellipse((point[0] - 2, point[1] - 2, point[0] + 2, point[1] + 2), fill=color)
    with atomic_path(path) as partial:
        image.save(partial, format="PNG")
    return path


def evaluate_entries(entries: list[Entry], settings: EvalSettings) -> list[dict[str, Any]]:
    """Score every entry, then write the JSON, the Markdown table and, if asked, the plot."""
    evaluator = Evaluator(settings)
    results = [evaluator.evaluate(entry) for entry in tqdm(entries, desc="scoring videos", disable=len(entries) == 1)]
    output = Path(settings.output)
    write_json({"settings": settings.__dict__, "videos": results}, output)
    with atomic_path(output.with_suffix(".md")) as partial:
        Path(partial).write_text(format_table(results) + "\n", encoding="utf-8")
    if settings.plot:
        plot_face_similarity(results, output.with_suffix(".png"))
    return results
