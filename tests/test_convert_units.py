"""Converter-side units without built models: options, metadata flatbuffer, Edge TPU log parsing, the int8
interface (on a tiny real model), the one-way imports of the converter modules."""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("tensorflow")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from edgeface.converters import edgetpu, metadata, variants
from edgeface.converters.onnx_export import OnnxOptions
from edgeface.converters.report import ReportOptions

MANIFEST = {
    "role": "embedder", "family": "facenet-casia", "precision": "int8", "description": "FaceNet test",
    "input": {"shape": [1, 160, 160, 3], "dtype": "uint8", "color": "RGB", "mean": 127.5, "std": 128.0},
    "outputs": {"embedding": "out"}, "license": "MIT",
    "embedder": {"embedding_size": 512, "crop": {"method": "box_rect", "size": 160, "width": 1.2, "height": 1.5,
                                                 "shift_y": -0.1}},
    "sha256": "00" * 32, "model_file": "x.tflite", "converter_version": "edgeface-converters test",
}


@pytest.mark.parametrize("kwargs, message", [
    ({"variants": ("float16", "bfloat16")}, "bfloat16"),
    ({"variants": ()}, "at least one"),
    ({"roles": ("classifier",)}, "classifier"),
    ({"prune_sparsity": 1.5}, "prune_sparsity"),
])
def test_variant_options_name_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        variants.VariantOptions(**kwargs)


@pytest.mark.parametrize("cls, kwargs, message", [
    (OnnxOptions, {"opset": 9}, "opset"),
    (OnnxOptions, {"parity_samples": 0}, "parity_samples"),
    (OnnxOptions, {"min_cosine": 1.5}, "min_cosine"),
    (ReportOptions, {"pair_limit": 1}, "pair_limit"),
    (ReportOptions, {"heldout_crops": 0}, "heldout_crops"),
    (ReportOptions, {"pairs": "/nowhere/pairs.txt"}, "/nowhere/pairs.txt"),
])
def test_onnx_and_report_options_validate(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_metadata_flatbuffer_round_trip():
    buf = metadata.build_metadata(MANIFEST, ["embedding"])
    assert buf[4:8] == b"M001"
    md = metadata.parse_metadata(buf)
    assert md["min_parser_version"] == "1.5.0" and md["license"] == "MIT" and md["author"] == "edgeface"
    (sg,) = md["subgraphs"]
    (inp,) = sg["inputs"]
    assert inp["name"] == "image" and inp["content"] == "image" and inp["color_space"] == "RGB"
    assert inp["default_size"] == [160, 160]
    assert inp["normalization"] == {"mean": [127.5] * 3, "std": [128.0] * 3}
    np.testing.assert_allclose(inp["stats"]["max"], [127.5 / 128] * 3, rtol=1e-6)
    np.testing.assert_allclose(inp["stats"]["min"], [-127.5 / 128] * 3, rtol=1e-6)
    assert "uint8" in inp["description"] and "box_rect" in inp["description"]
    assert [o["name"] for o in sg["outputs"]] == ["embedding"]
    assert "L2-normalize" in sg["outputs"][0]["description"]
    embedded = sg["custom"]["edgeface_manifest"]
    assert embedded["family"] == "facenet-casia" and "sha256" not in embedded


def test_metadata_rejects_foreign_buffers():
    with pytest.raises(metadata.MetadataError, match="M001"):
        metadata.parse_metadata(b"\x08\x00\x00\x00TFL3" + b"\x00" * 16)


LOG = """Edge TPU Compiler version 16.0.384591198
Input: facenet_casia_int8.tflite
Output: facenet_casia_int8_edgetpu.tflite

Operator                       Count      Status

CONV_2D                        130        Mapped to Edge TPU
CONV_2D                        2          More than one subgraph is not supported
FULLY_CONNECTED                1          Operation is otherwise supported, but not mapped due to some unspecified limitation
QUANTIZE                       1          Mapped to Edge TPU
Number of operations that will run on Edge TPU: 131
Number of operations that will run on CPU: 3
"""


def test_compiler_log_is_parsed():
    r = edgetpu.parse_compiler_log(LOG)
    assert r["version"] == "16.0.384591198"
    assert r["edgetpu_ops"] == 131 and r["cpu_ops"] == 3
    assert r["mapped"] == {"CONV_2D": 130, "QUANTIZE": 1}
    assert r["unmapped"] == {"CONV_2D": 2, "FULLY_CONNECTED": 1}
    assert "unspecified limitation" in r["reasons"]["FULLY_CONNECTED"][0]


def test_compile_command_is_exact(tmp_path):
    cmd = edgetpu.compile_command(tmp_path / "m_int8.tflite")
    assert cmd == ["edgetpu_compiler", "--show_operations", "--out_dir", str(tmp_path), str(tmp_path / "m_int8.tflite")]


def _tiny_int8(tmp_path, **interface):
    """A real (tiny) conv model through the shared full-int8 conversion: two outputs, like a detector."""
    import tensorflow as tf
    import tf_keras as keras

    from edgeface.converters import quantize

    inp = keras.Input((8, 8, 3), batch_size=1)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    a = keras.layers.Reshape((64, 1))(keras.layers.Conv2D(1, 1, name="score")(x))
    b = keras.layers.Reshape((64, 16))(keras.layers.Conv2D(16, 1, name="box")(x))
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, [a, b]))
    rng = np.random.RandomState(0)
    samples = [rng.uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32) for _ in range(8)]
    quantize.configure_full_int8(converter, lambda: ([s] for s in samples), **interface)
    path = tmp_path / "tiny_int8.tflite"
    path.write_bytes(converter.convert())
    return path, samples


def test_full_int8_interface_and_its_int8_io_twin_are_the_same_model(tmp_path):
    """uint8 input + float32 outputs (MediaPipe / Android) and the int8-I/O twin give bit-identical outputs
    through the runtime's own quantize / dequantize, and the Edge TPU report passes both."""
    from edgeface import runtime
    from edgeface.converters import quantize

    path, samples = _tiny_int8(tmp_path)
    assert quantize.interface(path) == {"input": "uint8", "outputs": ["float32", "float32"]}
    twin = tmp_path / "tiny_int8_io.tflite"
    twin.write_bytes(quantize.int8_io(path.read_bytes()))
    assert quantize.interface(twin) == {"input": "int8", "outputs": ["int8", "int8"]}
    a, b = runtime.make_interpreter(path, threads=1), runtime.make_interpreter(twin, threads=1)
    assert [d["name"] for d in a.get_output_details()] == [d["name"] for d in b.get_output_details()]
    (qa,), (qb,) = ([d["quantization"] for d in it.get_input_details()] for it in (a, b))
    assert qa[0] == qb[0] and qa[1] == qb[1] + 128  # same scale; the uint8 zero point is the int8 one + 128
    for x in samples:
        for it in (a, b):
            runtime.set_input(it, x)
            it.invoke()
        for i in range(2):
            np.testing.assert_array_equal(runtime.get_output(a, i), runtime.get_output(b, i))
    r = edgetpu.analyze(path)
    assert r["ready"], r["problems"]
    assert [(x["op"], x["where"]) for x in r["interface_ops"]] == [("DEQUANTIZE", "output")] * 2
    assert "DEQUANTIZE (float32 output) x2" in r["cut"] and "QUANTIZE" in r["op_histogram"]
    assert edgetpu.analyze(twin)["ready"] and edgetpu.analyze(twin)["interface_ops"] == []
    with pytest.raises(ValueError, match="already has an int8 interface"):
        quantize.int8_io(twin.read_bytes())


def test_float_inside_an_int8_model_is_still_reported(tmp_path):
    """Only the boundary DEQUANTIZE is excused: a model whose input is float32 *and* computed in float is not ready."""
    import tensorflow as tf
    import tf_keras as keras

    inp = keras.Input((8, 8, 3), batch_size=1)
    path = tmp_path / "float.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(
        keras.Model(inp, keras.layers.Conv2D(2, 3)(inp))).convert())
    r = edgetpu.analyze(path)
    assert not r["ready"] and r["interface_ops"] == [] and r["first_unsupported_op"]["index"] == 0


def test_converter_modules_import_each_other_one_way():
    """No import cycle among the converter modules (module level or inside functions)."""
    import ast
    from pathlib import Path

    folder = Path(metadata.__file__).parent
    graph = {}
    for f in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names)
        graph[f.stem] = deps & {p.stem for p in folder.glob("*.py")}

    def cycle_from(start, node, seen):
        for nxt in graph.get(node, ()):
            if nxt == start:
                return [node, nxt]
            if nxt not in seen:
                seen.add(nxt)
                found = cycle_from(start, nxt, seen)
                if found:
                    return [node, *found]
        return None

    cycles = {m: cycle_from(m, m, set()) for m in graph}
    assert not {m: c for m, c in cycles.items() if c}, cycles


def test_build_variants_flag_runs_the_variants_after_the_build(monkeypatch, tmp_path):
    from edgeface import cli
    from edgeface.converters import commands

    seen = []
    monkeypatch.setattr(commands, "cmd_variants", lambda ns: seen.append(ns) or 0)
    args = cli.build_parser().parse_args(["build", "--out", str(tmp_path), "--variants", "float16,dynamic-int8,int8"])
    assert args.variants == ("float16", "dynamic_int8", "int8") and args.func is commands.cmd_build
    monkeypatch.setattr(commands, "build_only", lambda a: 0)
    assert args.func(args) == 0
    (ns,) = seen
    assert ns.models == str(tmp_path) and ns.variants == ("float16", "dynamic_int8")  # int8 comes from the build
    monkeypatch.setattr(commands, "build_only", lambda a: 1)
    assert args.func(args) == 1 and len(seen) == 1  # a failed build builds no variants
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["build", "--variants", "int4"])
