"""Face boxes: OpenCV's bundled Haar cascades (offline, no weights to fetch) and box overlap.

Used by Face VCD (where the face is in each frame), the offline subject masks (where the
person is in each photo) and the miniature world's instrument accuracy.
"""

import numpy as np

from magicme.types import Box

HUMAN_FACE = "haarcascade_frontalface_default.xml"
CAT_FACE = "haarcascade_frontalcatface_extended.xml"


def haar_faces(frame: np.ndarray, cascade: str = HUMAN_FACE, min_share: int = 20, min_side: int = 16) -> list[Box]:
    """Face boxes in an RGB uint8 frame (H, W, 3); faces smaller than 1/`min_share` of the short side are ignored."""
    import cv2

    gray = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY))
    smallest = max(min_side, min(gray.shape) // min_share)
    classifier = cv2.CascadeClassifier(cv2.data.haarcascades + cascade)
    faces = classifier.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=6, minSize=(smallest, smallest))
    return [tuple(int(v) for v in face) for face in faces]


def opencv_face_detector(frame: np.ndarray) -> list[Box]:
    """Frontal human faces: Face VCD's default detector."""
    return haar_faces(frame)


def intersection(a: Box, b: Box) -> int:
    """The area two boxes share, in pixels."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0, width) * max(0, height)


def overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller box: 1 when one box sits inside the other."""
    return intersection(a, b) / min(a[2] * a[3], b[2] * b[3])


def iou(a: Box, b: Box) -> float:
    """Intersection over union."""
    shared = intersection(a, b)
    return shared / (a[2] * a[3] + b[2] * b[3] - shared)
