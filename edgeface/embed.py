"""Face embedder adapter: crop per the manifest's recipe, normalize, invoke, dequantize, L2-normalize."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from . import preprocess, runtime
from .manifest import ManifestError, read_manifest

CROP_METHODS = ("box_rect", "box_margin", "similarity")
#: Five-point template (eyes, nose, mouth centre) for similarity alignment in a 112 px square, scaled to size.
ALIGN_TEMPLATE_112 = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [56.14, 92.28]], np.float32)


def face_crop(image: np.ndarray, box: np.ndarray, keypoints: Optional[np.ndarray], recipe: dict) -> np.ndarray:
    """Cut the face out of ``image`` the way the embedder was trained (``recipe`` from the manifest).

    ``box_rect``: a ``width`` x ``height`` rectangle (in detector-box widths) shifted down by ``shift_y``
    box widths, stretched to ``size`` x ``size``: how FaceNet crops (MTCNN box plus margin).
    ``box_margin``: the square around the detector box enlarged by ``margin`` (a fraction of the box side),
    resized to ``size``. ``similarity``: eyes, nose and mouth keypoints warped onto a fixed template.
    """
    method, size = recipe["method"], int(recipe["size"])
    if method == "box_rect":
        return preprocess.crop_rect(image, box, float(recipe["width"]), float(recipe["height"]),
                                    float(recipe["shift_y"]), size)
    if method == "box_margin":
        return preprocess.crop_box(image, box, size, float(recipe["margin"]))
    if method == "similarity":
        if keypoints is None:
            raise ValueError("similarity alignment needs keypoints")
        return preprocess.align_face(image, np.asarray(keypoints)[:4], ALIGN_TEMPLATE_112 * (size / 112.0), size)
    raise ValueError(f"unknown crop method {method!r}; expected one of {CROP_METHODS}")


def l2_normalize(x: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


class FaceEmbedder:
    """Turns face crops into L2-normalized embeddings; compare two with a dot product (cosine similarity).

    The manifest fixes the crop recipe, the input normalization and the recommended
    ``min_cosine_similarity`` (with the data it was calibrated on).
    """

    def __init__(self, model_path: str | os.PathLike, threads: Optional[int] = None,
                 accelerator: Optional[str] = None, runtime_name: Optional[str] = None):
        self.manifest = read_manifest(model_path)
        if self.manifest["role"] != "embedder":
            raise ManifestError(f"{model_path}: is a {self.manifest['role']}, not an embedder")
        self.section = self.manifest["embedder"]
        self.recipe = self.section["crop"]
        self.interpreter = runtime.make_interpreter(model_path, threads, accelerator, runtime_name)
        runtime.check_input(self.interpreter, self.manifest, model_path)
        self._out = runtime.output_index(self.interpreter, self.manifest["outputs"]["embedding"])
        self.mean, self.std = self.manifest["input"]["mean"], self.manifest["input"]["std"]
        self.size = int(self.recipe["size"])

    @property
    def model_id(self) -> str:
        """Identifies the embedding space: galleries refuse embeddings from another model."""
        return f"{self.manifest['family']}:{self.manifest['precision']}:{self.manifest['sha256'][:16]}"

    @property
    def space_id(self) -> str:
        """The embedding space shared by every precision of one upstream model (float and int8 agree)."""
        return f"{self.manifest['family']}:{self.manifest['upstream']['sha256'][:16]}"

    @property
    def dim(self) -> int:
        return int(self.section["embedding_size"])

    @property
    def min_cosine_similarity(self) -> float:
        return float(self.section["min_cosine_similarity"])

    def crop(self, image: np.ndarray, box: np.ndarray, keypoints: Optional[np.ndarray] = None) -> np.ndarray:
        return face_crop(image, box, keypoints, self.recipe)

    def embed_crop(self, crop: np.ndarray) -> np.ndarray:
        """Embedding (dim,) of one RGB ``uint8`` crop of the recipe's size."""
        if crop.shape != (self.size, self.size, 3):
            raise ValueError(f"crop must be ({self.size}, {self.size}, 3), got {crop.shape}")
        runtime.set_input(self.interpreter, preprocess.normalize(crop, self.mean, self.std)[None])
        self.interpreter.invoke()
        return l2_normalize(runtime.get_output(self.interpreter, self._out).reshape(-1))
