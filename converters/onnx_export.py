"""ONNX export of built models with tf2onnx, parity-checked in onnxruntime on real faces.

* float32 TFLite -> float ONNX; parity: cosine similarity of every output to TFLite float on held-out
  inputs (LFW DevTest photos for the detector, face crops for the embedder), must be >= ``min_cosine``
  (0.999) for every sample and output;
* full-int8 TFLite -> QDQ ONNX (tf2onnx turns quantized tensors into QuantizeLinear/DequantizeLinear pairs
  around float ops; onnxruntime fuses them into integer kernels); parity against TFLite int8 (same
  quantization, must be >= ``min_cosine_int8``, 0.98: onnxruntime's integer kernels round differently, measured
  0.992 / 0.997 for the short / full range detector heads) and, for information, against TFLite float.

Inputs and outputs keep the TFLite tensor names; an int8 model keeps int8/uint8 I/O with the TFLite
tensors' scale and zero point (recorded in the export result).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgeface import runtime
from edgeface.manifest import read_manifest

from . import common

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OnnxOptions:
    """Attributes: int8 (also export the int8 models as QDQ), opset, parity_samples (real inputs per model),
    min_cosine (float parity bar), min_cosine_int8 (QDQ vs TFLite int8 bar), lfw (data folder),
    detectors (specs to export; default all in the index), roles."""
    int8: bool = True
    opset: int = 17
    parity_samples: int = 16
    min_cosine: float = 0.999
    min_cosine_int8: float = 0.98
    lfw: Optional[str] = None
    detectors: Optional[Sequence[str]] = None
    roles: Sequence[str] = ("detector", "embedder")

    def __post_init__(self):
        if not 13 <= int(self.opset) <= 21:
            raise ValueError(f"opset must be in 13..21 (QDQ needs >= 13), got {self.opset}")
        if self.parity_samples < 1:
            raise ValueError(f"parity_samples must be >= 1, got {self.parity_samples}")
        for name in ("min_cosine", "min_cosine_int8"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        bad = [r for r in self.roles if r not in ("detector", "embedder")]
        if bad:
            raise ValueError(f"roles: unknown {bad}")


def export(tflite_path: str | os.PathLike, onnx_path: str | os.PathLike, opset: int = 17) -> Path:
    """tf2onnx conversion of a .tflite file; the .onnx appears only when complete and valid."""
    import onnx
    import tf2onnx

    tflite_path, onnx_path = Path(tflite_path), Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = onnx_path.with_name(onnx_path.name + ".part")
    try:
        tf2onnx.convert.from_tflite(str(tflite_path), opset=opset, output_path=str(tmp))
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, onnx_path)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{tflite_path}: ONNX export failed ({type(exc).__name__}: {exc})") from exc
    return onnx_path


class _TFLite:
    def __init__(self, path: Path):
        self.it = runtime.make_interpreter(path, threads=2)
        self.inp = self.it.get_input_details()[0]
        self.outs = self.it.get_output_details()

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        runtime.set_input(self.it, x)
        self.it.invoke()
        return {d["name"]: runtime.get_output(self.it, i) for i, d in enumerate(self.outs)}


class _ONNX:
    """onnxruntime session fed and read like the TFLite model (quantized I/O with the TFLite parameters)."""

    def __init__(self, path: Path, tflite: _TFLite):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.in_name = self.sess.get_inputs()[0].name
        self.tfl = tflite
        self.params = {d["name"]: d for d in tflite.outs}

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        d = self.tfl.inp
        if runtime.is_quantized(d):
            scale, zp = d["quantization"]
            x = runtime.quantize(x, scale, zp, d["dtype"])
        else:
            x = x.astype(np.float32)
        names = [o.name for o in self.sess.get_outputs()]
        out = {}
        for name, value in zip(names, self.sess.run(names, {self.in_name: x})):
            detail = self.params.get(name)
            if detail is not None and runtime.is_quantized(detail):
                value = runtime.dequantize(value, *detail["quantization"])
            out[name] = np.asarray(value, np.float32)
        return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else float(np.allclose(a, b))


def _as_compared(out: dict, keys: dict) -> dict:
    res = {}
    for key, tensor in keys.items():
        v = out[tensor]
        res[key] = 1.0 / (1.0 + np.exp(-np.clip(v, -80, 80))) if key == "scores" else v
    return res


def compare(run_a, run_b, inputs: Sequence[np.ndarray], keys: dict[str, str]) -> dict:
    """Per output key: min / mean cosine over the inputs and max abs difference."""
    stats = {k: {"cos": [], "max_abs": 0.0} for k in keys}
    for x in inputs:
        a, b = run_a(x), run_b(x)
        for key, tensor in keys.items():
            if tensor not in b:
                raise ValueError(f"output {tensor!r} missing from the ONNX model (has {sorted(b)})")
            stats[key]["cos"].append(_cos(a[tensor], b[tensor]))
            stats[key]["max_abs"] = max(stats[key]["max_abs"], float(np.abs(a[tensor] - b[tensor]).max()))
    return {k: {"min_cosine": round(min(v["cos"]), 6), "mean_cosine": round(float(np.mean(v["cos"])), 6),
                "max_abs_diff": round(v["max_abs"], 6)} for k, v in stats.items()}


def parity_inputs(role: str, manifest: dict, models_dir: Path, index_table: dict, count: int,
                  lfw: Optional[str]) -> list[np.ndarray]:
    """Real, held-out inputs for a model: letterboxed DevTest photos or DevTest face crops (float, normalized)."""
    from edgeface import preprocess

    from . import heldout

    root = heldout.lfw_root(lfw)
    inp = manifest["input"]
    if role == "detector":
        size = int(inp["shape"][1])
        return heldout.detector_inputs(heldout.devtest_images(root, count), size, inp["mean"], inp["std"])
    spec = next(iter(index_table["detectors"]))
    default_float = index_table.get("default_detector_float32") or index_table["detectors"][spec]["float32"]
    crops = heldout.face_crops(heldout.devtest_images(root, count + 4), models_dir / default_float,
                               manifest["embedder"]["crop"])[:count]
    return [preprocess.normalize(c, inp["mean"], inp["std"])[None] for c in crops]


def export_pair(float_model: Path, int8_model: Optional[Path], out_dir: Path, inputs: Sequence[np.ndarray],
                options: OnnxOptions) -> list[dict]:
    """Export the float (and int8) model of one network and check parity; one result dict per ONNX file."""
    fman = read_manifest(float_model)
    keys = fman["outputs"]
    ftfl = _TFLite(float_model)
    results = []
    f_onnx = export(float_model, out_dir / (float_model.stem + ".onnx"), options.opset)
    par = compare(ftfl, _ONNX(f_onnx, ftfl), inputs, keys)
    worst = min(v["min_cosine"] for v in par.values())
    results.append({"source": float_model.name, "onnx": f_onnx.name, "kind": "float",
                    "bytes": f_onnx.stat().st_size, "samples": len(inputs),
                    "parity": {"vs_tflite_float": par, "min_cosine": worst,
                               "summary": f"min cosine to TFLite float {worst:.6f}"},
                    "ok": worst >= options.min_cosine, "bar": options.min_cosine})
    if int8_model is not None and options.int8:
        qman = read_manifest(int8_model)
        qtfl = _TFLite(int8_model)
        q_onnx = export(int8_model, out_dir / (int8_model.stem + "_qdq.onnx"), options.opset)
        qrun = _ONNX(q_onnx, qtfl)
        vs_int8 = compare(qtfl, qrun, inputs, qman["outputs"])
        # the float model's output names differ from the int8 one's: compare by manifest key
        # and detector logits as probabilities: int8 saturates background logits (-30000 -> about -20) on
        # purpose, which only the raw logits see
        keyed_f = lambda x: _as_compared(ftfl(x), keys)  # noqa: E731 - a one-line local helper
        keyed_q = lambda x: _as_compared(qrun(x), qman["outputs"])  # noqa: E731 - a one-line local helper
        vs_float = compare(keyed_f, keyed_q, inputs, {k: k for k in keys})
        worst = min(v["min_cosine"] for v in vs_int8.values())
        import onnx

        ops = sorted({n.op_type for n in onnx.load(str(q_onnx), load_external_data=False).graph.node})
        results.append({"source": int8_model.name, "onnx": q_onnx.name, "kind": "qdq_int8",
                        "bytes": q_onnx.stat().st_size, "samples": len(inputs), "onnx_ops": ops,
                        "parity": {"vs_tflite_int8": vs_int8, "vs_tflite_float": vs_float, "min_cosine": worst,
                                   "summary": f"min cosine to TFLite int8 {worst:.4f}, to float "
                                              f"{min(v['min_cosine'] for v in vs_float.values()):.4f}"},
                        "ok": worst >= options.min_cosine_int8, "bar": options.min_cosine_int8})
    for r in results:
        log.info("%s -> %s: %s", r["source"], r["onnx"], r["parity"]["summary"])
    return results


def export_models(models_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  options: OnnxOptions = OnnxOptions()) -> list[dict]:
    """Export the float32 (and int8) detector(s) and embedder of a models folder; parity for each."""
    from .common import read_index, variant_table

    models_dir, out_dir = Path(models_dir), Path(out_dir)
    index = read_index(models_dir)
    table = variant_table(index)
    table["default_detector_float32"] = index["float32"]["detector"]
    jobs = []
    if "detector" in options.roles:
        for spec in options.detectors or list(table["detectors"]):
            entry = table["detectors"][spec]
            jobs.append(("detector", models_dir / entry["float32"],
                         models_dir / entry["int8"] if "int8" in entry else None))
    if "embedder" in options.roles:
        e = table["embedder"]
        jobs.append(("embedder", models_dir / e["float32"], models_dir / e["int8"] if "int8" in e else None))
    results = []
    for role, fmodel, qmodel in common.progress(jobs, "ONNX export"):
        inputs = parity_inputs(role, read_manifest(fmodel), models_dir, table, options.parity_samples, options.lfw)
        results += export_pair(fmodel, qmodel, out_dir, inputs, options)
    return results
