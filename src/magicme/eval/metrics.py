"""The numbers `magicme eval` reports, as plain functions of embeddings and frames.

Identity (face similarity, CLIP-I, DINO): cosine of each frame's embedding to the
reference photos' embeddings, averaged over references. Prompt fidelity (CLIP-T): cosine
of frames to the prompt. Temporal consistency: cosine of consecutive frames' CLIP
embeddings (Magic-Me, Table 1). Because a frozen video is perfectly consistent, the
motion is reported too: pixel flicker, and dynamic degree as mean optical-flow magnitude
(VBench's idea, measured with OpenCV's Farneback flow, which needs no weights).
"""

import itertools

import numpy as np
import torch

from magicme.io.video import to_uint8


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D) x (M, D) -> (N, M) cosine similarities."""
    a, b = torch.nn.functional.normalize(a.float(), dim=-1), torch.nn.functional.normalize(b.float(), dim=-1)
    return a @ b.T


def similarity_to_references(frames: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per frame, the mean cosine to the reference embeddings: (F, D), (R, D) -> (F,)."""
    return cosine(frames, references).mean(dim=1)


def temporal_consistency(frames: torch.Tensor) -> float:
    """Mean cosine of consecutive frames' embeddings (F, D); 1 for a clip that never changes."""
    if len(frames) < 2:
        return 1.0
    unit = torch.nn.functional.normalize(frames.float(), dim=-1)
    return float((unit[:-1] * unit[1:]).sum(dim=-1).mean())


def summary(values: list[float | None]) -> dict[str, float | int | None]:
    """Mean, minimum (where identity drifts) and spread of per-frame scores; None marks a frame without a face."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "min": None, "std": None, "frames_scored": 0, "frames": len(values)}
    array = np.asarray(present, dtype=np.float64)
    stats = {"mean": float(array.mean()), "min": float(array.min()), "std": float(array.std())}
    return stats | {"frames_scored": len(present), "frames": len(values)}


def flicker(frames: torch.Tensor) -> float:
    """Mean absolute change between consecutive frames (F, 3, H, W) in [0, 1]: model-free."""
    return float((frames[1:] - frames[:-1]).abs().mean()) if len(frames) > 1 else 0.0


def dynamic_degree(frames: torch.Tensor) -> float:
    """Mean Farneback optical-flow magnitude between consecutive frames, in pixels per frame."""
    import cv2

    gray = [cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY) for frame in to_uint8(frames)]
    magnitudes = []
    for before, after in itertools.pairwise(gray):
        flow = cv2.calcOpticalFlowFarneback(before, after, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        magnitudes.append(np.linalg.norm(flow, axis=-1).mean())
    return float(np.mean(magnitudes)) if magnitudes else 0.0
