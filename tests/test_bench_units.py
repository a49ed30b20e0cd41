"""Unit tests of the benchmark helpers (no models needed, except where a fixture says so)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeface.benchmarks import common, gallery_scaling, preprocess_study
from edgeface.benchmarks.accuracy import impostor_scores, operating_points


def test_stats_ms():
    s = common.stats_ms([0.001, 0.002, 0.003, 0.010])
    assert s["n"] == 4 and s["min"] == 1.0 and s["median"] == 2.5 and 3.0 < s["p95"] <= 10.0
    assert common.stats_ms([])["median"] is None


def test_runs_profiles_are_data():
    full, quick = common.load_runs("latency"), common.load_runs("latency", "quick")
    assert full["runs"] >= 200 and quick["runs"] < full["runs"]
    assert quick["gallery_size"] < full["gallery_size"] and "drift_tolerance" in quick  # quick inherits full
    with pytest.raises(common.BenchmarkError):
        common.load_runs("nonexistent")


def test_machine_info_and_slug():
    info = common.machine_info()
    assert info["cores"] >= 1 and info["cpu"] and "numpy" in info["packages"]
    slug = common.device_slug(info)
    assert "/" not in slug and " " not in slug and slug.endswith(f"-{info['cores']}c")


def test_impostors_are_different_people():
    rng = np.random.default_rng(0)
    emb = {Path(f"/x/{name}/{name}_{i:04d}.jpg"): rng.standard_normal(8).astype(np.float32)
           for name in ("a", "b", "c") for i in range(1, 4)}
    emb[Path("/x/c/c_0009.jpg")] = None
    s = impostor_scores(emb, 10_000)
    assert len(s) == 27  # 3 x 3 x 3 cross-person pairs of 9 embedded images, no same-person pair


def test_operating_points_monotonic():
    rng = np.random.default_rng(1)
    gen, imp = rng.normal(0.7, 0.1, 2000), rng.normal(0.1, 0.1, 100_000)
    rows = operating_points(gen, imp, [0.1, 0.01, 0.001], {"default": 0.4})
    fars = [r["far"] for r in rows[:3]]
    assert fars[0] <= 0.1 and fars[1] <= 0.01 and fars[2] <= 0.001
    assert rows[0]["tar"] >= rows[1]["tar"] >= rows[2]["tar"]
    assert rows[3]["source"] == "manifest default" and rows[3]["threshold"] == 0.4


def test_degrade_and_enhance():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    dark = preprocess_study.degrade(img, "dark")
    assert dark.mean() < img.mean() / 2
    low = preprocess_study.degrade(img, "low_contrast")
    assert low.std() < img.std() / 2
    for e in ("equalize", "clahe", "gamma"):
        out = preprocess_study.enhance(dark, e)
        assert out.shape == img.shape and out.dtype == np.uint8 and out.mean() > dark.mean()
    with pytest.raises(ValueError):
        preprocess_study.enhance(img, "sharpen")


def test_compact_stores_agree():
    rng = np.random.default_rng(3)
    g = rng.standard_normal((500, 128)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = g[7] + 0.3 * rng.standard_normal(128).astype(np.float32)
    q /= np.linalg.norm(q)
    ref = gallery_scaling.Store("float32", g)
    for kind in ("float16", "int8"):
        st = gallery_scaling.Store(kind, g)
        assert st.top1(q)[0] == ref.top1(q)[0] == 1  # row 7 belongs to person 1 (5 rows per person)
        assert abs(st.top1(q)[1] - ref.top1(q)[1]) < 0.01
    assert gallery_scaling.Store("int8", g).nbytes < gallery_scaling.Store("float16", g).nbytes


@pytest.mark.slow  # needs built models
def test_delegate_info_counts_nodes(models_dir):
    from edgeface.benchmarks.latency import delegate_info
    from edgeface.runtime import make_interpreter

    index = common.read_index(models_dir)
    it = make_interpreter(models_dir / index["int8"]["detector"], threads=1)
    d = it._get_ops_details()
    info = delegate_info(it)
    assert info["nodes"] == sum(o["op_name"] != "DELEGATE" for o in d)
    assert info["delegate_kernels"] >= 1 and 0 < info["nodes_delegated"] <= info["nodes"]


def test_bench_cli_help_and_delegation():
    r = subprocess.run([sys.executable, "-m", "edgeface.cli", "bench", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0
    for name in ("latency", "accuracy", "identify", "gallery", "preprocess", "peers"):
        assert name in r.stdout
    r = subprocess.run([sys.executable, "-m", "edgeface.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert "bench" in r.stdout
    r = subprocess.run([sys.executable, "-m", "edgeface.cli", "bench", "latency", "--models", "/nonexistent",
                        "--no-progress"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "models.json" in r.stderr


def test_notes_markdown():
    assert common.notes_markdown([]) == ""
    assert common.notes_markdown(["a", "b"]) == "\nNotes:\n* a\n* b"


def test_interface_cost_pairs_int8_with_its_int8_io_twin():
    from edgeface.benchmarks import latency

    def row(precision, det, emb, total):
        return {"runtime": "litert", "precision": precision, "threads": 1,
                "stages_ms": {"detect_invoke": {"median": det}, "total": {"median": total}},
                "embed_per_face_ms": {"median": emb}}

    result = {"scenes": [{"scene": "lfw_1face", "rows": [row("int8", 1.1, 17.3, 24.1), row("int8_io", 1.0, 17.5, 24.4),
                                                         row("float32", 2.0, 60.0, 70.0)]},
                         {"scene": "group", "rows": [row("int8", 9.0, 21.0, 140.0)]}]}  # no twin: no row
    (cost,) = latency.interface_cost(result)
    assert cost["scene"] == "lfw_1face" and cost["threads"] == 1
    assert cost["detect_invoke_ms"] == {"int8": 1.1, "int8_io": 1.0, "delta": 0.1}
    assert cost["total_ms"]["delta"] == -0.3 and cost["embed_per_face_ms"]["int8_io"] == 17.5


def test_model_variants_find_the_int8_io_twin_or_say_how_to_build_it(tmp_path):
    import json

    index = {"int8": {"detector": "d8.tflite", "embedder": "e8.tflite"},
             "detectors": {"short_range": {"int8": "d8.tflite"}}}
    (tmp_path / "models.json").write_text(json.dumps(index))
    for f in ("d8.tflite", "e8.tflite", "d8_io.tflite", "e8_io.tflite"):
        (tmp_path / f).write_bytes(b"")
    variants, notes = common.model_variants(tmp_path, ["int8", "int8_io"])
    assert [v.name for v in variants] == ["int8"] and "edgeface variants" in notes[0] and "int8_io" in notes[0]
    index["variants"] = {"embedder": {"int8_io": "e8_io.tflite"},
                         "detectors": {"short_range": {"int8_io": "d8_io.tflite"}}}
    (tmp_path / "models.json").write_text(json.dumps(index))
    variants, notes = common.model_variants(tmp_path, ["int8", "int8_io"])
    io = variants[1]
    assert (io.name, io.precision, io.detector.name, io.embedder.name) == ("int8_io", "int8", "short_range",
                                                                          "e8_io.tflite") and not notes
    assert [p.name for p in io.detector_files] == ["d8_io.tflite"]


def test_model_variants_noflip_suffix_turns_test_time_flip_off(tmp_path):
    import json

    index = {"int8": {"detector": "d8.tflite", "embedder": "e8.tflite"},
             "detectors": {"short_range": {"int8": "d8.tflite"}}}
    (tmp_path / "models.json").write_text(json.dumps(index))
    for f in ("d8.tflite", "e8.tflite"):
        (tmp_path / f).write_bytes(b"")
    variants, notes = common.model_variants(tmp_path, ["int8", "int8_noflip", "int8_flip", "float32_noflip"])
    assert [(v.name, v.precision, v.flip) for v in variants] == [("int8", "int8", None), ("int8_noflip", "int8", False),
                                                                 ("int8_flip", "int8", True)]
    assert variants[1].embedder == variants[0].embedder and "float32" in notes[0]


@pytest.mark.slow
def test_variant_key_tells_flip_from_no_flip(models_dir):
    """The accuracy benchmark caches embeddings by variant key: with flip and without must never share one."""
    keys = {v.name: v.key() for v in common.model_variants(models_dir, ["int8", "int8_noflip", "int8_flip"])[0]}
    assert len(set(keys.values())) == 3, keys


def _folder_with_detector_configs(tmp_path):
    import json

    index = {"int8": {"detector": "s8.tflite", "embedder": "e8.tflite"},
             "float32": {"detector": "s32.tflite", "embedder": "e32.tflite"},
             "int8_facenet": {"detector": "s8.tflite", "embedder": "fn8.tflite"},
             "detectors": {"short_range": {"int8": "s8.tflite", "float32": "s32.tflite"},
                           "full_range": {"int8": "f8.tflite", "float32": "f32.tflite"}},
             "detector_configs": {"auto": {"whole_frame": ["short_range", "full_range"], "tile_model": "full_range",
                                           "min_face": 20}},
             "default_detector": "auto",
             "variants": {"embedder": {"int8_io": "e8_io.tflite"},
                          "detectors": {"short_range": {"int8_io": "s8_io.tflite"},
                                        "full_range": {"int8_io": "f8_io.tflite"}}}}
    (tmp_path / "models.json").write_text(json.dumps(index))
    for f in ("s8", "s32", "f8", "f32", "e8", "e32", "fn8", "e8_io", "s8_io", "f8_io"):
        (tmp_path / f"{f}.tflite").write_bytes(b"")
    return tmp_path


def test_model_variants_time_detector_configurations_of_the_variant_precision(tmp_path):
    models = _folder_with_detector_configs(tmp_path)
    variants, notes = common.model_variants(models, ["int8", "float32", "int8_facenet", "int8_io"],
                                            ["short_range", "default", "auto"])  # default is auto: once
    assert not notes
    assert [v.name for v in variants] == ["int8", "float32", "int8_facenet", "int8_io", "int8+auto", "float32+auto",
                                          "int8_facenet+auto", "int8_io+auto"]
    by = {v.name: v for v in variants}
    assert by["int8_facenet+auto"].precision_name == "int8_facenet"
    assert by["int8_facenet+auto"].detector == by["int8+auto"].detector  # the int8 detector models
    assert [p.name for p in by["float32+auto"].detector_files] == ["s32.tflite", "f32.tflite"]
    assert [p.name for p in by["int8_io+auto"].detector_files] == ["s8_io.tflite", "f8_io.tflite"]
    assert by["int8+auto"].detector.min_face == 20 and by["int8"].detector.name == "short_range"
    # None (the runs.json default) is the folder's default_detector
    assert [v.name for v in common.model_variants(models, ["int8"], None)[0]] == ["int8+auto"]
    # and so do the benchmarks that take no --detectors (identify, peers, preprocess, gallery): what users get
    assert [v.name for v in common.model_variants(models, ["int8"])[0]] == ["int8+auto"]


def test_model_variants_refuse_an_unknown_detector_naming_the_offered_ones(tmp_path):
    models = _folder_with_detector_configs(tmp_path)
    with pytest.raises(common.BenchmarkError) as e:
        common.model_variants(models, ["int8"], ["auto", "tiny"])
    assert str(e.value).startswith("unknown detector 'tiny'") and "auto, short_range, full_range" in str(e.value)
    assert "\n" not in str(e.value)


def test_latency_tables_compare_like_with_like():
    from edgeface.benchmarks import latency

    def row(precision, det, total, emb=10.0):
        return {"runtime": "litert", "precision": precision, "threads": 1, "detector": det,
                "stages_ms": {"detect_invoke": {"median": 1.0}, "total": {"median": total}},
                "embed_per_face_ms": {"median": emb}}

    result = {"scenes": [{"scene": "lfw_1face", "rows": [
        row("int8", "short_range", 10.0), row("int8", "auto", 14.0), row("float32", "auto", 28.0),
        row("int8_facenet", "short_range", 40.0, 36.0), row("int8_facenet", "auto", 44.0, 36.0)]}]}
    (s,) = latency.speedups(result)  # float32 only with auto: one pair, never float32+auto / int8+short_range
    assert (s["detector"], s["total_speedup"]) == ("auto", 2.0)
    vs = {(v["precision"], v["detector"]): v for v in latency.versus(result)}
    assert set(vs) == {("int8", "short_range"), ("int8", "auto"), ("float32", "auto")}
    assert vs[("int8", "short_range")]["speedup"] == 4.0 and vs[("int8", "auto")]["total_ratio"] == round(14 / 44, 3)
    assert vs[("int8", "auto")]["embed_ratio"] == round(10 / 36, 3)
    assert latency.versus(result, "int8_pruned") == []
    # the previous default pipeline as it ran (FaceNet on short_range) against every configuration of the run
    prev = {(v["precision"], v["detector"]): v for v in latency.versus(result, "int8_facenet", "short_range")}
    assert set(prev) == {("int8", "short_range"), ("int8", "auto"), ("float32", "auto")}
    assert prev[("int8", "auto")]["speedup"] == round(40 / 14, 2) and prev[("int8", "auto")]["baseline_total_ms"] == 40
    assert all(v["baseline_detector"] == "short_range" for v in prev.values())
    md = "\n".join(latency.previous_default_markdown({"vs_previous_default": list(prev.values())}))
    assert "vs int8_facenet on short_range, the previous default pipeline" in md
    assert "| auto | int8 |" in md and "| short_range | int8 |" not in md  # that row is in the same-detector table
    assert latency.previous_default_markdown({"vs_previous_default": []}) == []
    assert latency.reference_key("group/litert/int8/t1") == "group/litert/int8/t1/short_range"
    assert latency.reference_key("group/litert/int8/t1/auto") == "group/litert/int8/t1/auto"
