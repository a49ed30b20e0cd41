"""Edge TPU readiness of a TFLite model, and ``edgetpu_compiler`` when it is installed.

The checks follow the model requirements in Coral's "TensorFlow models on the Edge TPU"
(https://coral.ai/docs/edgetpu/models-intro/#supported-operations):

* tensor parameters (weights) and activations are 8-bit quantized (int8/uint8; int32 only for biases);
* tensor sizes are constant at compile time (no dynamic dimension) and model parameters are constants;
* tensors have 1, 2 or 3 dimensions; with more, only the 3 innermost may be larger than 1;
* only the operations of the supported list, with their limitations;
* one subgraph.

The compiler walks the graph in execution order and maps ops to the Edge TPU until the first op it cannot
map; that op and everything after it run on the CPU (the graph is partitioned once). The report says where
that cut would be. When ``edgetpu_compiler`` is on PATH the model is compiled and the compiler's operation
table is parsed (mapped vs unmapped); otherwise the report carries the exact command to run.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Optional

from .common import read_index, tflite_schema, variant_table

log = logging.getLogger(__name__)

DOC_URL = "https://coral.ai/docs/edgetpu/models-intro/#supported-operations"
#: TFLite builtin op -> known limitation (Edge TPU supported operations, compiler 16 / runtime 14+).
SUPPORTED_OPS = {
    "ADD": "",
    "AVERAGE_POOL_2D": "no fused activation function",
    "CONCATENATION": "no fused activation function; a constant input must be all zeros and the only other input",
    "CONV_2D": "same dilation in x and y",
    "DEPTHWISE_CONV_2D": "same dilation in x and y",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "only the default weights format; output tensor is one-dimensional",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "unidirectional LSTM only",
    "MAXIMUM": "",
    "MAX_POOL_2D": "no fused activation function",
    "MEAN": "no reduction in the batch dimension; a z-reduction needs z a multiple of 4",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "no packing in the batch dimension",
    "PAD": "no padding in the batch dimension",
    "PRELU": "alpha must be 1-dimensional",
    "QUANTIZE": "",
    "REDUCE_MAX": "not on the batch dimension",
    "REDUCE_MIN": "not on the batch dimension",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "certain reshapes might not be mapped for large tensor sizes",
    "RESIZE_BILINEAR": "input/output is 3-dimensional; may stay on the CPU to avoid precision loss",
    "RESIZE_NEAREST_NEIGHBOR": "input/output is 3-dimensional; may stay on the CPU to avoid precision loss",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "1-dimensional input, max 16,000 elements",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "no split in the batch dimension",
    "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "",
    "STRIDED_SLICE": "all strides 1 (no effective stride); no ellipsis-axis or new-axis mask",
    "SUB": "",
    "SUM": "no reduction in the batch dimension; a z-reduction needs z a multiple of 4",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}
NO_FUSED_ACTIVATION = ("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION")
_INT8, _UINT8, _INT32 = 9, 3, 2
_TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8",
               10: "float64"}
COMPILER = "edgetpu_compiler"
#: On-chip memory for parameters (Coral docs: about 8 MB of SRAM caches the model's parameters).
SRAM_BYTES = 8 * 2**20


def _model(path: Path):
    schema = tflite_schema()
    data = path.read_bytes()
    if data[4:8] != b"TFL3":
        raise ValueError(f"{path}: not a TFLite flatbuffer")
    return schema.Model.GetRootAs(data, 0), schema


def _op_name(model, schema, op) -> str:
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    code = model.OperatorCodes(op.OpcodeIndex())
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if names.get(builtin) == "CUSTOM":
        return "CUSTOM:" + (code.CustomCode() or b"?").decode()
    return names.get(builtin, f"BUILTIN_{builtin}")


def _fused_activation(schema, op, kind: str) -> int:
    table = op.BuiltinOptions()
    if table is None:
        return 0
    cls = {"AVERAGE_POOL_2D": schema.Pool2DOptions, "MAX_POOL_2D": schema.Pool2DOptions,
           "CONCATENATION": schema.ConcatenationOptions}.get(kind)
    if cls is None:
        return 0
    opts = cls()
    opts.Init(table.Bytes, table.Pos)
    return opts.FusedActivationFunction()


def analyze(model_path: str | os.PathLike) -> dict:
    """The readiness report of one .tflite model (no compiler needed)."""
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model not found")
    model, schema = _model(path)
    problems: list[str] = []
    if model.SubgraphsLength() != 1:
        problems.append(f"{model.SubgraphsLength()} subgraphs; the Edge TPU compiles one")
    sg = model.Subgraphs(0)
    constant = set()
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        buf = model.Buffers(t.Buffer())
        if buf is not None and (buf.DataLength() > 0 or buf.Offset() > 1):
            constant.add(i)
    interface = _interface_ops(model, schema, sg)
    boundary = {x["tensor_index"] for x in interface}
    bad_types, dynamic, rank_bad = [], [], []
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        name = t.Name().decode()
        kind = _TYPE_NAMES.get(t.Type(), f"type{t.Type()}")
        if i in boundary:
            continue
        if t.Type() not in (_INT8, _UINT8) and not (t.Type() == _INT32 and i in constant):
            bad_types.append({"tensor": name, "type": kind, "constant": i in constant})
        sig = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else t.ShapeAsNumpy()
        shape = [int(d) for d in (t.ShapeAsNumpy() if t.ShapeLength() else [])]
        if t.ShapeSignatureLength() and any(int(d) < 0 for d in sig):
            dynamic.append({"tensor": name, "shape_signature": [int(d) for d in sig]})
        if i not in constant and len(shape) > 3 and any(d > 1 for d in shape[:-3]):  # weights are exempt
            rank_bad.append({"tensor": name, "shape": shape})
    ops, first_cut, warnings, channel_pads = [], None, [], []
    param_bytes = sum(model.Buffers(sg.Tensors(i).Buffer()).DataLength() for i in constant)
    if param_bytes > SRAM_BYTES:
        warnings.append(f"{param_bytes / 2**20:.1f} MiB of parameters exceed the Edge TPU's ~8 MiB on-chip memory: "
                        "the weights that do not fit stream from host memory on every inference (slower)")
    skip = {x["index"] for x in interface}
    for k in range(sg.OperatorsLength()):
        if k in skip:
            continue
        op = sg.Operators(k)
        kind = _op_name(model, schema, op)
        reasons = []
        if kind not in SUPPORTED_OPS:
            reasons.append("not in the Edge TPU supported-op list")
        elif kind in NO_FUSED_ACTIVATION and _fused_activation(schema, op, kind):
            reasons.append("fused activation function not supported on this op")
        io = [int(x) for x in op.InputsAsNumpy() if x >= 0] + [int(x) for x in op.OutputsAsNumpy()]
        for x in io:
            t = sg.Tensors(x)
            if t.Type() not in (_INT8, _UINT8) and not (t.Type() == _INT32 and x in constant):
                reasons.append(f"tensor {t.Name().decode()!r} is {_TYPE_NAMES.get(t.Type(), t.Type())}")
                break
        for x in [int(v) for v in op.OutputsAsNumpy()]:
            shape = [int(d) for d in sg.Tensors(x).ShapeAsNumpy()] if sg.Tensors(x).ShapeLength() else []
            if len(shape) > 3 and any(d > 1 for d in shape[:-3]):
                reasons.append(f"output rank {len(shape)} with a non-1 outer dimension {shape}")
        if kind == "PAD" and op.InputsLength() > 1 and int(op.Inputs(1)) in constant:
            pads = model.Buffers(sg.Tensors(int(op.Inputs(1))).Buffer()).DataAsNumpy().view("<i4").reshape(-1, 2)
            if len(pads) == 4 and pads[3].any():
                channel_pads.append(k)
            if pads[0].any():
                reasons.append("pads the batch dimension")
        out_name = sg.Tensors(int(op.OutputsAsNumpy()[0])).Name().decode() if op.OutputsLength() else ""
        entry = {"index": k, "op": kind, "output": out_name, "supported": not reasons}
        if reasons:
            entry["reasons"] = reasons
        if kind in SUPPORTED_OPS and SUPPORTED_OPS[kind]:
            entry["limitation"] = SUPPORTED_OPS[kind]
        ops.append(entry)
        if reasons and first_cut is None:
            first_cut = entry
    if channel_pads:
        warnings.append(f"{len(channel_pads)} PAD ops pad the channel (z) dimension (ops "
                        f"#{', #'.join(map(str, channel_pads))}): documented as supported except on the batch "
                        "dimension; compilers before v16 mapped only x/y padding, so check the compiler log")
    hist = Counter(o["op"] for o in ops)
    unsupported = Counter(o["op"] for o in ops if not o["supported"])
    if bad_types:
        problems.append(f"{len(bad_types)} tensors are not int8/uint8 (e.g. {bad_types[0]['tensor']!r} "
                        f"{bad_types[0]['type']})")
    if dynamic:
        problems.append(f"{len(dynamic)} tensors have a dynamic shape (e.g. {dynamic[0]['tensor']!r})")
    if rank_bad:
        problems.append(f"{len(rank_bad)} tensors exceed the rank limit (e.g. {rank_bad[0]['tensor']!r} "
                        f"{rank_bad[0]['shape']})")
    if unsupported:
        problems.append("unsupported ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(unsupported.items())))
    n = len(ops)
    mapped_before_cut = first_cut["index"] if first_cut else n
    return {
        "model": str(path), "ops": n, "op_histogram": dict(sorted(hist.items())),
        "unsupported_op_histogram": dict(sorted(unsupported.items())),
        "tensors": sg.TensorsLength(), "non_int8_tensors": bad_types[:50], "non_int8_tensor_count": len(bad_types),
        "dynamic_tensors": dynamic, "rank_violations": rank_bad,
        "inputs": [_tensor_info(sg.Tensors(int(i))) for i in sg.InputsAsNumpy()],
        "outputs": [_tensor_info(sg.Tensors(int(i))) for i in sg.OutputsAsNumpy()],
        "first_unsupported_op": first_cut,
        "ops_before_cut": mapped_before_cut,
        "cut": _cut_text(first_cut, mapped_before_cut, n) + _interface_text(interface),
        "interface_ops": [{k: v for k, v in x.items() if k != "tensor_index"} for x in interface],
        "ready": not problems, "problems": problems, "warnings": warnings, "parameter_bytes": int(param_bytes),
        "op_list": ops, "source": DOC_URL,
    }


def _interface_ops(model, schema, sg) -> list[dict]:
    """Float boundary ops: a ``QUANTIZE`` reading a float32 graph input, a ``DEQUANTIZE`` writing a float32
    graph output from an 8-bit tensor. The compiler leaves them on the CPU, before / after the one Edge TPU
    partition (Coral: "float inputs and outputs ... the quantize / dequantize ops stay on the CPU")."""
    inputs, outputs = set(int(i) for i in sg.InputsAsNumpy()), set(int(i) for i in sg.OutputsAsNumpy())
    found = []
    for k in range(sg.OperatorsLength()):
        op = sg.Operators(k)
        kind = _op_name(model, schema, op)
        if op.InputsLength() < 1 or op.OutputsLength() != 1:
            continue
        src, dst = int(op.Inputs(0)), int(op.Outputs(0))
        if (kind == "QUANTIZE" and src in inputs and sg.Tensors(src).Type() not in (_INT8, _UINT8)
                and sg.Tensors(dst).Type() in (_INT8, _UINT8)):
            found.append({"index": k, "op": kind, "tensor": sg.Tensors(src).Name().decode(), "tensor_index": src,
                          "type": _TYPE_NAMES.get(sg.Tensors(src).Type()), "where": "input"})
        elif (kind == "DEQUANTIZE" and dst in outputs and sg.Tensors(src).Type() in (_INT8, _UINT8)
              and sg.Tensors(dst).Type() not in (_INT8, _UINT8)):
            found.append({"index": k, "op": kind, "tensor": sg.Tensors(dst).Name().decode(), "tensor_index": dst,
                          "type": _TYPE_NAMES.get(sg.Tensors(dst).Type()), "where": "output"})
    return found


def _interface_text(interface: list[dict]) -> str:
    if not interface:
        return ""
    kinds = Counter(f"{x['op']} ({x['type']} {x['where']})" for x in interface)
    return "; on the CPU around it: " + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items()))


def _cut_text(first_cut: Optional[dict], before: int, n: int) -> str:
    if first_cut is None:
        return f"all {n} ops can map to the Edge TPU (one partition)"
    where = f"op #{first_cut['index']} {first_cut['op']} (output {first_cut['output'][:80]!r})"
    if before == 0:
        return f"no op would map: the first op, {where}, is unsupported, so the whole graph runs on the CPU"
    return (f"the compiler would map ops #0..#{before - 1} ({before}/{n}) to the Edge TPU and run {where} "
            "and every later op on the CPU")


def _tensor_info(t) -> dict:
    q = t.Quantization()
    scale = float(q.ScaleAsNumpy()[0]) if q is not None and q.ScaleLength() else None
    zp = int(q.ZeroPointAsNumpy()[0]) if q is not None and q.ZeroPointLength() else None
    return {"name": t.Name().decode(), "type": _TYPE_NAMES.get(t.Type(), t.Type()),
            "shape": [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else [], "scale": scale,
            "zero_point": zp}


def compile_command(model_path: str | os.PathLike, out_dir: Optional[str | os.PathLike] = None) -> list[str]:
    path = Path(model_path)
    return [COMPILER, "--show_operations", "--out_dir", str(Path(out_dir) if out_dir else path.parent), str(path)]


_TABLE_LINE = re.compile(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(.+?)\s*$")


def parse_compiler_log(text: str) -> dict:
    """Mapped / unmapped ops from ``edgetpu_compiler --show_operations`` output."""
    out = {"mapped": {}, "unmapped": {}, "reasons": {}, "edgetpu_ops": None, "cpu_ops": None,
           "version": None}
    m = re.search(r"Edge TPU Compiler version (\S+)", text)
    if m:
        out["version"] = m.group(1)
    m = re.search(r"Number of operations that will run on Edge TPU:\s*(\d+)", text)
    if m:
        out["edgetpu_ops"] = int(m.group(1))
    m = re.search(r"Number of operations that will run on CPU:\s*(\d+)", text)
    if m:
        out["cpu_ops"] = int(m.group(1))
    for line in text.splitlines():
        mt = _TABLE_LINE.match(line.strip())
        if not mt or mt.group(1) in ("OPERATOR",):
            continue
        op, count, status = mt.group(1), int(mt.group(2)), mt.group(3)
        key = "mapped" if status.startswith("Mapped to Edge TPU") else "unmapped"
        out[key][op] = out[key].get(op, 0) + count
        if key == "unmapped":
            out["reasons"].setdefault(op, []).append(status)
    return out


def compile_model(model_path: str | os.PathLike, out_dir: Optional[str | os.PathLike] = None,
                  timeout: int = 600) -> dict:
    """Run ``edgetpu_compiler`` (must be on PATH) and parse its log."""
    cmd = compile_command(model_path, out_dir)
    exe = shutil.which(COMPILER)
    if exe is None:
        raise FileNotFoundError(f"{COMPILER} is not on PATH; run: {' '.join(cmd)}")
    Path(cmd[3]).mkdir(parents=True, exist_ok=True)
    r = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout)
    parsed = parse_compiler_log(r.stdout + "\n" + r.stderr)
    parsed.update(returncode=r.returncode, log=(r.stdout + r.stderr)[-4000:], command=cmd)
    compiled = Path(cmd[3]) / (Path(model_path).stem + "_edgetpu.tflite")
    parsed["compiled_model"] = str(compiled) if compiled.is_file() else None
    return parsed


def check_model(model_path: str | os.PathLike, compile: bool = True,
                out_dir: Optional[str | os.PathLike] = None) -> dict:
    """:func:`analyze`, plus the compiler's verdict when ``edgetpu_compiler`` is installed (else its command)."""
    report = analyze(model_path)
    report["compile_command"] = " ".join(compile_command(model_path, out_dir))
    if compile and shutil.which(COMPILER):
        report["compiler"] = compile_model(model_path, out_dir)
    else:
        report["compiler"] = None
    return report


def default_models(models_dir: str | os.PathLike) -> list[Path]:
    """The full-int8 models of a models folder (default detector, other detectors, landmark models, embedder,
    pruned)."""
    models_dir = Path(models_dir)
    table = variant_table(read_index(models_dir))
    files = []
    for entries in [*table["detectors"].values(), *table["landmarks"].values()]:
        files += [entries[v] for v in ("int8", "pruned_int8") if v in entries]
    files += [table["embedder"][v] for v in ("int8", "pruned_int8") if v in table["embedder"]]
    return [models_dir / f for f in files]


def format_report(r: dict) -> str:
    lines = [f"{Path(r['model']).name}: {'READY' if r['ready'] else 'NOT READY'} for the Edge TPU "
             f"({r['ops']} ops, {r['tensors']} tensors)"]
    for p in r["problems"]:
        lines.append(f"  problem: {p}")
    for w in r.get("warnings", []):
        lines.append(f"  warning: {w}")
    lines.append("  ops: " + ", ".join(f"{k} x{v}" for k, v in r["op_histogram"].items()))
    lines.append("  inputs: " + ", ".join(f"{t['name']} {t['type']} {t['shape']}" for t in r["inputs"]))
    lines.append("  outputs: " + ", ".join(f"{t['name']} {t['type']} {t['shape']}" for t in r["outputs"]))
    lines.append(f"  partition: {r['cut']}")
    limits = sorted({f"{o['op']}: {o['limitation']}" for o in r["op_list"] if o.get("limitation")})
    for lim in limits:
        lines.append(f"  check on compile: {lim}")
    c = r.get("compiler")
    if c:
        lines.append(f"  edgetpu_compiler {c.get('version')}: {c.get('edgetpu_ops')} ops on the Edge TPU, "
                     f"{c.get('cpu_ops')} on the CPU; unmapped {c.get('unmapped')}")
    else:
        lines.append(f"  {COMPILER} not on PATH; compile with: {r['compile_command']}")
    return "\n".join(lines)
