"""int8 vs float BlazeFace on every LFW image: recall against float, IoU and keypoint error.

    python -m edgeface.benchmarks.detector_fidelity --models models --data ../shared/data/lfw [--limit N]

Writes JSON and a markdown table (``--out``, default ``benchmarks/results/``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from edgeface import blazeface, preprocess
from edgeface.detect import FaceDetector
from edgeface.lfw import central_face


def run(models: Path, lfw: Path, detector: str, limit: int | None, tiles: int = 1) -> dict:
    index = json.loads((models / "models.json").read_text())
    entry = index["detectors"][detector]
    fdet = FaceDetector(models / entry["float32"], tiles=tiles)
    qdet = FaceDetector(models / entry["int8"], tiles=tiles)
    files = sorted((lfw / "images_deepfunneled").glob("*/*.jpg"))
    if limit:
        files = files[:: max(1, len(files) // limit)][:limit]
    found_f = found_both = extra = missing_float_only = 0
    ious, kp_err = [], []
    t0 = time.time()
    for k, f in enumerate(files):
        image = preprocess.read_image(f)
        a, b = fdet.detect(image), qdet.detect(image)
        extra += max(0, len(b) - len(a))
        if not a:
            continue
        found_f += 1
        i = central_face(a, image.shape)
        if not b:
            missing_float_only += 1
            continue
        ov = blazeface.iou(a[i].box, np.stack([x.box for x in b]))
        j = int(np.argmax(ov))
        if ov[j] > 0.3:
            found_both += 1
            ious.append(float(ov[j]))
            size = float(a[i].box[2] - a[i].box[0])
            kp_err.append(float(np.linalg.norm(a[i].keypoints[:4] - b[j].keypoints[:4], axis=1).mean()) / size)
        else:
            missing_float_only += 1
        if k and k % 2000 == 0:
            print(f"  {k}/{len(files)} images", file=sys.stderr)
    return {
        "detector": detector, "tiles": tiles, "images": len(files), "float_found": found_f,
        "int8_found_where_float_did": found_both,
        "int8_recall_vs_float": found_both / max(found_f, 1),
        "median_iou": float(np.median(ious)), "p05_iou": float(np.percentile(ious, 5)),
        "median_keypoint_error_rel_box": float(np.median(kp_err)),
        "int8_extra_detections": extra, "seconds": round(time.time() - t0, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--data", type=Path, required=True, help="LFW folder")
    p.add_argument("--detector", default="short_range", choices=["short_range", "full_range"])
    p.add_argument("--limit", type=int, default=None, help="evenly spaced subset of images")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    r = run(args.models, args.data, args.detector, args.limit)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"detector_fidelity_{args.detector}.json").write_text(json.dumps(r, indent=2) + "\n")
    md = ("| detector | images | float found | int8 found (of those) | recall | median IoU | p5 IoU | "
          "keypoint err / box | int8 extra |\n|---|---|---|---|---|---|---|---|---|\n"
          f"| {r['detector']} | {r['images']} | {r['float_found']} | {r['int8_found_where_float_did']} | "
          f"{100 * r['int8_recall_vs_float']:.2f}% | {r['median_iou']:.3f} | {r['p05_iou']:.3f} | "
          f"{100 * r['median_keypoint_error_rel_box']:.2f}% | {r['int8_extra_detections']} |\n")
    (args.out / f"detector_fidelity_{args.detector}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
