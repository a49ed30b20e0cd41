"""Converter-side units without built models: options, metadata flatbuffer, Edge TPU log parsing, source
format and Keras layer errors, atomic writes."""
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


def test_register_variant_only_for_the_pruned_hook():
    with pytest.raises(ValueError, match="float16"):
        variants.register_variant("float16", lambda *a: None)


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


@pytest.mark.parametrize("name", ["model.onnx", "weights.bin", "README"])
def test_unsupported_source_format_names_the_file(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(b"not a model")
    with pytest.raises(variants.UnsupportedModelError, match=name):
        variants.load_source(f)


def test_folder_that_is_not_a_savedmodel(tmp_path):
    with pytest.raises(variants.UnsupportedModelError, match="saved_model.pb"):
        variants.load_source(tmp_path)


def _tiny_keras(tmp_path, extra_layer):
    import tf_keras as keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = extra_layer(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    path = tmp_path / "tiny.keras"
    keras.Model(inp, x).save(path)
    return path


def test_keras_lambda_layer_is_named_and_nothing_is_written(tmp_path):
    import tf_keras as keras

    src = _tiny_keras(tmp_path, keras.layers.Lambda(lambda t: t * 2.0, name="times_two"))
    out = tmp_path / "out" / "tiny_int8.tflite"
    with pytest.raises(variants.UnsupportedModelError, match=r"times_two.*Lambda"):
        variants.convert_model(src, out, "float16")
    assert not out.exists() and not list(tmp_path.glob("out/*"))


def test_keras_unknown_layer_is_named(tmp_path):
    import tf_keras as keras

    @keras.utils.register_keras_serializable(package="test_convert")
    class Weird(keras.layers.Layer):
        def call(self, x):
            return x

    src = _tiny_keras(tmp_path, Weird(name="weird_one"))
    with pytest.raises(variants.UnsupportedModelError, match=r"weird_one.*Weird"):
        variants.check_keras_layers(src)


def test_supported_keras_model_converts_atomically(tmp_path):
    import tf_keras as keras

    src = _tiny_keras(tmp_path, keras.layers.ReLU(name="relu"))
    assert [c for _, c in variants.check_keras_layers(src)] == ["InputLayer", "Conv2D", "ReLU",
                                                               "GlobalAveragePooling2D"]
    out = variants.convert_model(src, tmp_path / "tiny_f16.tflite", "float16")
    assert out.read_bytes()[4:8] == b"TFL3" and not list(tmp_path.glob("*.part"))
    samples = [np.random.RandomState(i).uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32) for i in range(4)]
    q = variants.convert_model(src, tmp_path / "tiny_int8.tflite", "int8", samples)
    from ai_edge_litert.interpreter import Interpreter

    assert Interpreter(str(q)).get_input_details()[0]["dtype"] == np.uint8


def test_keras_h5_weights_only_is_refused(tmp_path):
    import h5py

    f = tmp_path / "weights.h5"
    with h5py.File(f, "w") as h:
        h.create_dataset("x", data=np.zeros(3))
    with pytest.raises(variants.UnsupportedModelError, match="weights.h5"):
        variants.load_source(f)


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
