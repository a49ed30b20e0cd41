"""Run MediaPipe Tasks on edgeface models, as an Android app would (runs in the mediapipe side venv).

stdin: {"detector": {"model": path, "images": [paths], "min_score": s, "iou_threshold": t},
        "embedder": {"model": path, "crops": npz path (array "crops", N x H x W x 3 uint8), "out": npz path}}
(either part may be missing). stdout, last line: {"detections": {path: [[x1, y1, x2, y2, score], ...]},
"embeddings": npz path (array "embeddings", N x D, L2-normalized by the task)}.
"""
import json
import sys

import cv2
import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions


def image(rgb):
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))


def main():
    job = json.loads(sys.stdin.read())
    out = {}
    if "detector" in job:
        d = job["detector"]
        opts = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=d["model"]),
                                          running_mode=vision.RunningMode.IMAGE,
                                          min_detection_confidence=d["min_score"],
                                          min_suppression_threshold=d["iou_threshold"])
        found = {}
        with vision.FaceDetector.create_from_options(opts) as det:
            for path in d["images"]:
                rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
                faces = []
                for f in det.detect(image(rgb)).detections:
                    b = f.bounding_box
                    faces.append([b.origin_x, b.origin_y, b.origin_x + b.width, b.origin_y + b.height,
                                  f.categories[0].score])
                found[path] = faces
        out["detections"] = found
    if "embedder" in job:
        e = job["embedder"]
        opts = vision.ImageEmbedderOptions(base_options=BaseOptions(model_asset_path=e["model"]),
                                           running_mode=vision.RunningMode.IMAGE, l2_normalize=True,
                                           quantize=False)
        with vision.ImageEmbedder.create_from_options(opts) as emb:
            crops = np.load(e["crops"])["crops"]
            vecs = [np.asarray(emb.embed(image(c)).embeddings[0].embedding, np.float32) for c in crops]
        np.savez(e["out"], embeddings=np.stack(vecs))
        out["embeddings"] = e["out"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
