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


def run(models: Path, lfw: Path, detector: str, limit: int | None) -> dict:
    """Compare the int8 and float detectors of a models folder on LFW (all images, or ``limit`` spread out)."""
    from edgeface.lfw import detector_fidelity

    index = json.loads((models / "models.json").read_text())
    entry = index["detectors"][detector]
    files = sorted((lfw / "images_deepfunneled").glob("*/*.jpg"))
    if limit:
        files = files[:: max(1, len(files) // limit)][:limit]
    t0 = time.time()
    r = detector_fidelity(models / entry["float32"], models / entry["int8"], files)
    return {
        "detector": detector, "images": r["images"], "float_found": r["float_found"],
        "int8_found_where_float_did": r["variant_found_where_float_did"],
        "int8_recall_vs_float": r["recall_vs_float"], "median_iou": r["median_iou"], "p05_iou": r["p05_iou"],
        "median_keypoint_error_rel_box": r["median_keypoint_error_rel_box"],
        "int8_extra_detections": r["extra_detections"], "seconds": round(time.time() - t0, 1),
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
