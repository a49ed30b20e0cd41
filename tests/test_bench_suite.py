"""`edgeface bench`: every benchmark's short (--profile quick) version runs on real models and LFW and writes its
JSON, markdown and PNG. No timing assertions: speed claims live in the benchmark outputs."""
from __future__ import annotations

import json

import pytest

from edgeface.benchmarks import cli


def _run(name, models_dir, data_root, out, *extra):
    argv = [name, "--models", str(models_dir), "--data", str(data_root / "lfw"), "--out", str(out),
            "--profile", "quick", "--no-progress", *extra]
    assert cli.main(argv) == 0
    result = json.loads((out / f"{name}.json").read_text())
    assert (out / f"{name}.md").read_text().strip()
    return result


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


@pytest.mark.slow  # needs built models
def test_latency_quick(models_dir, data_root, out):
    r = _run("latency", models_dir, data_root, out, "--bbt", str(data_root / "bbt"))
    assert (out / "latency.png").stat().st_size > 1000
    scenes = {s["scene"]: s for s in r["scenes"]}
    assert set(scenes) == {"lfw_1face", "group"}
    one = scenes["lfw_1face"]["rows"]
    assert {row["precision"] for row in one} == {"int8", "float32"}
    # the quick profile times the single short-range model and the folder's default configuration (auto)
    assert r["default_detector"] == "auto" and r["detectors"] == ["short_range", "auto"]
    assert {(row["precision"], row["detector"]) for row in one} == {
        (p, d) for p in ("int8", "float32") for d in ("short_range", "auto")}
    assert len({row["config"] for row in one}) == len({row["variant_key"] for row in one}) == len(one) == 4
    for row in one:
        assert row["config"] == f"litert/{row['precision']}/t1/{row['detector']}"
        assert len(row["detector_models"]) == (1 if row["detector"] == "short_range" else 2)
        assert row["delegate"]["detector"]["nodes"] > 0
        # the device's decision path: the mirror image only for faces near the threshold (deterministic)
        assert row["flip"] and 0 <= row["mirrored_share"] <= 0.5
    for row in one:
        st = row["stages_ms"]
        assert row["faces_per_frame"] == 1
        assert st["total"]["n"] == r["settings"]["runs"]
        assert 0 < st["total"]["min"] <= st["total"]["median"] <= st["total"]["p95"]
        staged = sum(st[s]["median"] for s in ("decode", "detect_pre", "detect_invoke", "detect_post", "crop",
                                               "embed", "match"))
        assert staged <= st["total"]["median"] * 1.5  # stages account for the frame
        fp = row["fresh_process"]
        assert "error" not in fp and fp["load_ms"] > 0 and fp["peak_rss_mb"] > fp["rss_before_import_mb"]
        d = row["delegate"]["embedder"]
        assert 0 <= d["nodes_delegated"] <= d["nodes"] and d["nodes"] > 50
    assert scenes["group"]["rows"][0]["faces_per_frame"] >= 2
    assert {(s["scene"], s["runtime"], s["threads"], s["detector"]) for s in r["int8_vs_float32"]} == {
        (sc, "litert", 1, d) for sc in ("lfw_1face", "group") for d in ("short_range", "auto")}
    md = (out / "latency.md").read_text()
    assert "| detector |" in md and "litert/int8/t1/auto" not in md  # a column, not a label
    assert "| mirrored |" in md
    assert r["machine"]["packages"]["ai-edge-litert"]
    assert r["runtimes"] == ["litert"] and isinstance(r["notes"], list)


@pytest.mark.slow  # needs built models
def test_latency_unknown_detector_is_refused_in_one_line_before_any_timing(models_dir, data_root, tmp_path,
                                                                           capsys):
    argv = ["latency", "--models", str(models_dir), "--data", str(data_root / "lfw"), "--out", str(tmp_path),
            "--profile", "quick", "--no-progress", "--detectors", "short_range", "tiny_faces"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgeface bench latency: error: unknown detector 'tiny_faces'")
    assert "auto, short_range, full_range" in err[0]
    assert not list(tmp_path.iterdir())  # nothing timed, nothing written


@pytest.mark.slow  # needs built models
def test_latency_reference_and_drift(models_dir, data_root, out):
    from edgeface.benchmarks import latency

    r = json.loads((out / "latency.json").read_text())
    ref = latency.reference_payload(r)
    assert ref["median_total_ms"] and all(v > 0 for v in ref["median_total_ms"].values())
    same = latency.drift_check(r, ref, 0.5)
    assert same["compared"] == len(ref["median_total_ms"]) and same["drifted"] == 0
    slow = dict(ref, median_total_ms={k: v / 3 for k, v in ref["median_total_ms"].items()})
    assert latency.drift_check(r, slow, 0.5)["drifted"] == same["compared"]
    # a reference written before the detector dimension (keys without it) timed the short-range model: its
    # rows are compared with this run's short_range rows, the auto rows have no reference (not compared)
    legacy = dict(ref, median_total_ms={k.rsplit("/", 1)[0]: v for k, v in ref["median_total_ms"].items()
                                        if k.endswith("/short_range")})
    old = latency.drift_check(r, legacy, 0.5)
    assert old["compared"] == len(legacy["median_total_ms"]) > 0 and old["drifted"] == 0
    assert all(row["key"].endswith("/short_range") for row in old["rows"])
    assert old["no_reference"] and all(k.endswith("/auto") for k in old["no_reference"])
    assert "have no reference median" in latency.markdown(dict(r, drift=old))


@pytest.mark.slow  # needs built models
def test_accuracy_quick(models_dir, data_root, out):
    r = _run("accuracy", models_dir, data_root, out)
    (v,) = r["variants"]
    assert v["variant"] == "int8" and v["lfw_10fold"]["pairs"] == 60
    assert 0.7 <= v["lfw_10fold"]["accuracy_mean"] <= 1.0
    assert 0.5 <= v["devtest"]["accuracy_at_manifest_threshold"] <= 1.0
    assert v["impostor_pairs"] > 1000
    targets = [o for o in v["operating_points"] if o["source"].startswith("FAR target")]
    assert [o["far"] <= float(o["source"].split()[-1]) for o in targets] == [True] * len(targets)
    thr = [o["threshold"] for o in targets]
    assert thr == sorted(thr)  # stricter FAR, higher threshold
    assert (out / "accuracy.png").is_file()
    assert list((out / "cache").glob("emb_*.npz"))


@pytest.mark.slow  # needs built models
def test_accuracy_reports_what_flipping_near_the_threshold_decides(models_dir, data_root, tmp_path):
    """With a flipped variant and its _noflip twin in one run, the device's decision path (mirror only near the
    threshold) is compared with flipping every probe, at every manifest threshold."""
    r = _run("accuracy", models_dir, data_root, tmp_path, "--precisions", "int8", "int8_noflip")
    assert [v["variant"] for v in r["variants"]] == ["int8", "int8_noflip"]
    rows = r["lazy_flip"]
    assert {row["threshold_from"] for row in rows} >= {"accuracy (default)", "far_0.001"}
    for row in rows:
        assert row["variant"] == "int8" and row["band"] == 0.05 and row["pairs"] == 60
        assert 0 <= row["mirrored_share"] < 0.5  # most probes are decided on one model run
        # near-threshold mirroring decides (almost) as flipping every probe does
        assert row["decisions_unlike_full_flip"] <= 2
        assert abs(row["errors_near_threshold_flip"] - row["errors_full_flip"]) <= 2
    assert "near the threshold only" in (tmp_path / "accuracy.md").read_text()


@pytest.mark.slow  # needs built models
def test_identify_quick(models_dir, data_root, out):
    r = _run("identify", models_dir, data_root, out)
    (v,) = r["variants"]
    default = json.loads((models_dir / "models.json").read_text())["default_detector"]
    assert v["variant"] == f"int8+{default}"  # the folder's default detector, what users get
    ks = [x["k"] for x in v["per_k"]]
    assert ks == [1, 3]
    for x in v["per_k"]:
        cs = x["closed_set"]
        assert x["people"] >= 2 and x["probes"] > 0 and x["distractors"] > 0
        assert all(0.5 <= cs[m] <= 1.0 for m in ("nearest_gallery_top1", "linear_svm_top1", "knn_top1"))
        assert cs["nearest_gallery_top5"] >= cs["nearest_gallery_top1"]
        fpir = [o["fpir"] for o in x["open_set"] if o["threshold_from"].startswith("FPIR")]
        assert fpir == sorted(fpir, reverse=True)
    assert len(v["per_identity"]) == v["per_k"][0]["people"]
    for f in ("identify_confusion.png", "identify_open_set.png", "identify_per_identity.csv"):
        assert (out / f).is_file()


@pytest.mark.slow  # needs built models
def test_gallery_quick(models_dir, data_root, out):
    r = _run("gallery", models_dir, data_root, out)
    by = {(row["embeddings"], row["store"]): row for row in r["rows"]}
    assert set(by) == {(n, s) for n in (200, 1000) for s in ("float32", "float16", "int8")}
    for n in (200, 1000):
        assert by[(n, "float16")]["bytes"] * 2 == by[(n, "float32")]["bytes"]
        assert by[(n, "int8")]["bytes"] < by[(n, "float16")]["bytes"]
        assert by[(n, "int8")]["top1_agreement_with_float32"] >= 0.9
        assert by[(n, "int8")]["max_score_diff"] < 0.02


@pytest.mark.slow  # needs built models
def test_preprocess_quick(models_dir, data_root, out):
    r = _run("preprocess", models_dir, data_root, out)
    assert {(x["degradation"], x["enhancement"]) for x in r["rows"]} == {
        (d, e) for d in ("none", "dark") for e in ("none", "clahe")}
    assert all(0.5 <= x["accuracy_at_manifest_threshold"] <= 1.0 for x in r["rows"])


@pytest.mark.slow  # needs built models
def test_peers_quick(models_dir, data_root, out):
    r = _run("peers", models_dir, data_root, out)
    ours = r["peers"][0]
    assert ours["name"].startswith("edgeface") and ours["pairs"] == 8
    index = json.loads((models_dir / "models.json").read_text())
    family = json.loads((models_dir / index["int8"]["embedder"]).with_suffix(".json").read_text())["family"]
    assert f"({index['default_detector']} + {family}, 1 thread)" in ours["name"]  # names what was measured
    assert ours["per_image_ms"]["n"] == ours["images"]
    try:
        import face_recognition  # noqa: F401 - imported only to probe that the optional package is installed
    except ImportError:
        assert any("face_recognition not installed" in n for n in r["notes"])
        return
    theirs = r["peers"][1]
    assert theirs["per_image_ms"]["n"] == ours["per_image_ms"]["n"] and theirs["cv_accuracy"] >= 0.5


@pytest.mark.slow  # needs built models
def test_face_sizes_quick(models_dir, data_root, out):
    r = _run("face_sizes", models_dir, data_root, out)
    assert (out / "face_sizes.png").stat().st_size > 1000
    rows = r["precisions"]["int8"]
    assert {"default", "short_range", "short_range tiles 3", "full_range"} <= set(rows)
    default = rows["default"]
    assert default["faces"] > 200 and default["recall"] > rows["short_range"]["recall"]
    assert set(default["median_ms"]) == set(default["scenes"]) and default["time_ratio_vs_short_range"]
