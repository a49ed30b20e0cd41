"""Detector configurations for ``models.json``: one default that finds every face size, boxes in one geometry.

Two jobs after the BlazeFace models are built:

* :func:`calibrate_box_transform`: the full-range model draws its boxes a little differently from the
  short-range model (the reference the embedders' box crop recipes were fitted to). On the calibration
  images (LFW DevTrain) both detect the same faces, natively and pasted smaller onto a plain canvas (small
  faces are where the full-range box gets used); the median ratio of sizes and offset of centres becomes the
  ``detector.box_transform`` of each full-range manifest, so every detector hands out reference-geometry
  boxes and no embedder recipe depends on which detector found the face.
* :func:`add_detector_configs`: writes the named configurations (``auto``, the default: short and full range
  on the whole frame, full range on tiles for faces down to 20 px) into the index.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from edgeface.blazeface import iou
from edgeface.detect import BoxTransform, DetectorModel
from edgeface.manifest import read_manifest, write_manifest

log = logging.getLogger(__name__)

REFERENCE = "short_range"
DEFAULT_CONFIG = "auto"
#: Where each calibration image is pasted: (scale of the image, side of the square canvas).
PLACEMENTS = ((1.0, 250), (1.0, 400), (0.5, 400), (0.3, 400))
AUTO = {
    "whole_frame": ["short_range", "full_range"],
    "tile_model": "full_range",
    "min_face": 20,
    "tile_face_fraction": 0.08,
    "min_face_fraction": 0.0156,
    "description": "every face size in one call: short and full range BlazeFace on the whole frame (where "
                   "both find a face, the short-range reading for faces of >= 1/4 of the frame, else the "
                   "full-range one), the full-range model on a pyramid of "
                   "tiles for faces down to min_face pixels (or min_face_fraction of the longer side "
                   "of a huge photo, which caps its time) in large frames",
}


def _place(image: np.ndarray, scale: float, canvas: int) -> tuple[np.ndarray, float, np.ndarray]:
    """``image`` scaled by ``scale`` at the centre of a grey ``canvas`` square: (canvas, scale, offset)."""
    h, w = image.shape[:2]
    nh, nw = round(h * scale), round(w * scale)
    small = image if scale == 1.0 else cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    out = np.full((canvas, canvas, 3), 128, np.uint8)
    y0, x0 = (canvas - nh) // 2, (canvas - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = small
    return out, nh / h, np.array([x0, y0, x0, y0], np.float32)


def calibrate_box_transform(reference: DetectorModel, source: DetectorModel,
                            images: Sequence[np.ndarray]) -> dict:
    """Median box transform taking ``source`` boxes onto ``reference`` boxes of the same faces.

    The reference box comes from the image itself; the source model sees it natively and pasted smaller
    (:data:`PLACEMENTS`). Pairs need IoU >= 0.5 after scaling the reference box along.
    """
    if source.box_transform is not None:
        raise ValueError(f"{source.path.name}: already has a box_transform; calibrate the raw model")
    rows = []
    for image in images:
        refs = reference.faces(image)
        if not refs:
            continue
        for scale, canvas in PLACEMENTS:
            placed, s, offset = _place(image, scale, canvas)
            ref_boxes = np.stack([r.box * s + offset for r in refs])
            for f in source.faces(placed):
                overlaps = iou(f.box, ref_boxes)
                j = int(np.argmax(overlaps))
                if overlaps[j] < 0.5:
                    continue
                (x1, y1, x2, y2), (r1, q1, r2, q2) = f.box, ref_boxes[j]
                w, h = x2 - x1, y2 - y1
                rows.append(((r2 - r1) / w, (q2 - q1) / h, ((r1 + r2) - (x1 + x2)) / 2 / w,
                             ((q1 + q2) - (y1 + y2)) / 2 / h))
    if len(rows) < 20:
        raise ValueError(f"only {len(rows)} faces found by both {reference.path.name} and {source.path.name}: "
                         "too few to calibrate a box transform")
    med = np.median(np.array(rows), axis=0)
    t = BoxTransform(*(round(float(v), 4) for v in med))
    mapped = [iou(t.apply(np.array([0, 0, 1, 1], np.float32)), np.array([[
        0.5 - r[0] / 2 + r[2], 0.5 - r[1] / 2 + r[3], 0.5 + r[0] / 2 + r[2], 0.5 + r[1] / 2 + r[3]]]))[0]
        for r in rows]
    return dict(t._asdict(), reference=REFERENCE, faces=len(rows),
                median_iou_after=round(float(np.median(mapped)), 4),
                source=f"median over faces of the calibration set found by both models, natively and pasted at "
                       f"{[p[0] for p in PLACEMENTS]} scale on grey canvases; reference box: float32 "
                       f"{reference.path.name} on the image itself")


def add_detector_configs(out: Path, index: dict, images: Sequence[np.ndarray]) -> dict:
    """Calibrate every non-reference detector's box transform into its manifests and add the ``auto``
    configuration (the default) to ``index`` (changed in place and returned)."""
    detectors = index.get("detectors", {})
    if REFERENCE not in detectors:
        log.warning("no %s detector built: no box transform, no %s configuration", REFERENCE, DEFAULT_CONFIG)
        return index
    reference = DetectorModel(out / detectors[REFERENCE]["float32"])
    for name, files in detectors.items():
        if name == REFERENCE:
            continue
        for _precision, file in files.items():
            path = out / file
            t = calibrate_box_transform(reference, DetectorModel(path), images)
            data = read_manifest(path)
            data["detector"]["box_transform"] = t
            write_manifest(path, data)
            log.info("%s: box transform onto %s %s (median IoU after %.3f, %d faces)", file, REFERENCE,
                     {k: t[k] for k in BoxTransform._fields}, t["median_iou_after"], t["faces"])
    if all(m in detectors for m in AUTO["whole_frame"]):
        index["detector_configs"] = {DEFAULT_CONFIG: dict(AUTO)}
        index["default_detector"] = DEFAULT_CONFIG
    return index


def main(argv=None) -> int:
    """Add the configurations to an existing models folder (copied from one built without them)."""
    import argparse
    import json

    from edgeface.calibration_data import builder
    from edgeface.manifest import INDEX

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("models", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    index = json.loads((args.models / INDEX).read_text())
    c = index["calibration"]
    cset = builder.default_set(c["num_images"], c["seed"])
    if cset.id != c["id"]:
        raise SystemExit(f"calibration set {cset.id} differs from the build's {c['id']}")
    add_detector_configs(args.models, index, builder.load_images(cset))
    (args.models / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
