"""arm64 proof (issue 4): the comparison on synthetic arrays (always), the whole proof when asked.

The whole proof builds a Debian bookworm arm64 root under qemu-user, installs the device extra from aarch64
wheels for LiteRT and tflite-runtime and compares the int8 pipeline with x86 (device/arm64/prove.sh). It
needs root, qemu-aarch64-static, debootstrap and the network, and takes minutes: it runs only with
EDGEFACE_ARM64_PROOF=1.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ARM64 = REPO / "device" / "arm64"


def _load_check():
    spec = importlib.util.spec_from_file_location("edgeface_arm64_check", ARM64 / "check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load_check()


def _outputs(seed=0, n=3):
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        out[f"det_boxes:{i}"] = rng.integers(-128, 128, (1, 896, 16), dtype=np.int8)
        out[f"det_scores:{i}"] = rng.integers(-128, 128, (1, 896, 1), dtype=np.int8)
        out[f"emb_out:{i}"] = rng.integers(-128, 128, (1, 128), dtype=np.int8)
    return out


# ------------------------------------------------------------------------------------ compare_int8
def test_identical_outputs_pass():
    ref = _outputs()
    r = check.compare_int8(ref, {k: v.copy() for k, v in ref.items()})
    assert r["ok"] and r["problems"] == []
    assert {g: s["max_diff"] for g, s in r["groups"].items()} == {"det_boxes": 0, "det_scores": 0, "emb_out": 0}
    assert r["groups"]["emb_out"]["tensors"] == 3 and r["groups"]["emb_out"]["elements"] == 3 * 128


def test_one_step_passes_two_steps_fail():
    ref = _outputs()
    cand = {k: v.copy() for k, v in ref.items()}
    e = cand["emb_out:1"].astype(np.int16)
    e[0, 5] += 1 if e[0, 5] < 127 else -1
    cand["emb_out:1"] = e.astype(np.int8)
    r = check.compare_int8(ref, cand)
    assert r["ok"]
    assert r["groups"]["emb_out"] == {"tensors": 3, "elements": 384, "differing": 1, "max_diff": 1,
                                      "worst": "emb_out:1"}
    b = cand["det_boxes:2"].astype(np.int16)
    b[0, 7, 3] = b[0, 7, 3] + 2 if b[0, 7, 3] < 126 else b[0, 7, 3] - 2
    cand["det_boxes:2"] = b.astype(np.int8)
    r = check.compare_int8(ref, cand)
    assert not r["ok"]
    assert r["groups"]["det_boxes"]["max_diff"] == 2 and r["groups"]["det_boxes"]["worst"] == "det_boxes:2"
    assert len(r["problems"]) == 1 and r["problems"][0].startswith("det_boxes:2: max |int8 difference| 2 > 1")


def test_no_int8_wraparound():
    """-128 vs 127 is 255 steps apart, not 1 (int8 subtraction would wrap)."""
    ref = {"emb_out:0": np.array([[-128, 127]], np.int8)}
    cand = {"emb_out:0": np.array([[127, -128]], np.int8)}
    r = check.compare_int8(ref, cand, groups=("emb_out",))
    assert not r["ok"] and r["groups"]["emb_out"]["max_diff"] == 255


def test_tolerance_parameter():
    ref = {"emb_out:0": np.array([[0, 10]], np.int8)}
    cand = {"emb_out:0": np.array([[3, 10]], np.int8)}
    assert not check.compare_int8(ref, cand, 1, ("emb_out",))["ok"]
    assert check.compare_int8(ref, cand, 3, ("emb_out",))["ok"]
    assert not check.compare_int8(ref, {"emb_out:0": ref["emb_out:0"]}, 0, ("emb_out",))["problems"]


def test_missing_extra_shape_dtype_and_float_are_problems():
    ref = _outputs(n=2)
    cand = {k: v.copy() for k, v in ref.items()}
    del cand["det_scores:1"]
    cand["emb_out:7"] = ref["emb_out:0"]
    cand["emb_out:0"] = ref["emb_out:0"].reshape(128, 1)
    cand["det_boxes:1"] = ref["det_boxes:1"].astype(np.uint8)
    r = check.compare_int8(ref, cand)
    text = "\n".join(r["problems"])
    assert not r["ok"]
    assert "det_scores:1: missing in the candidate" in text
    assert "emb_out:7: not in the reference" in text
    assert "emb_out:0: reference int8(1, 128) vs candidate int8(128, 1)" in text
    assert "det_boxes:1: reference int8" in text and "uint8" in text
    f = {"emb_out:0": np.zeros((1, 4), np.float32)}
    assert "not a quantized integer tensor" in check.compare_int8(f, f, groups=("emb_out",))["problems"][0]


def test_empty_group_is_a_problem():
    r = check.compare_int8({}, {})
    assert not r["ok"] and len(r["problems"]) == 3


def test_other_keys_are_ignored():
    ref = _outputs(n=1)
    ref["det_in:0"] = np.zeros((1, 2), np.int8)
    cand = dict(ref, **{"det_in:0": np.full((1, 2), 100, np.int8)})
    assert check.compare_int8(ref, cand)["ok"]


# ----------------------------------------------------------------------------------- compare_faces
def _image(path, boxes, names, **kw):
    return dict(path=path, boxes=boxes, names=names, **kw)


def test_faces_same_identities_in_other_order_pass():
    ref = [_image("a.jpg", [[0, 0, 10, 10], [20, 20, 30, 30]], ["amy", None]), _image("b.jpg", [], [])]
    cand = [_image("a.jpg", [[20.4, 20, 30, 30], [0, 0, 10, 10.2]], [None, "amy"]), _image("b.jpg", [], [])]
    r = check.compare_faces(ref, cand)
    assert r["ok"], r["problems"]
    assert r["faces"] == 2 and r["count_mismatches"] == 0 and r["identity_mismatches"] == 0
    assert r["max_box_shift_px"] == pytest.approx(0.4)
    assert 0.9 < r["min_iou"] < 1


def test_faces_count_and_identity_mismatches():
    ref = [_image("a.jpg", [[0, 0, 10, 10]], ["amy"]), _image("b.jpg", [[0, 0, 10, 10]], ["raj"])]
    cand = [_image("a.jpg", [[0, 0, 10, 10], [50, 50, 60, 60]], ["amy", None]),
            _image("b.jpg", [[0, 0, 10, 10]], ["howard"])]
    r = check.compare_faces(ref, cand)
    assert not r["ok"] and r["count_mismatches"] == 1 and r["identity_mismatches"] == 1
    assert "a.jpg: 1 faces on the reference, 2 on the candidate" in r["problems"]
    assert "b.jpg: face 0 is 'raj' on the reference, 'howard' on the candidate" in r["problems"]


def test_faces_unmatched_box_and_image_list():
    ref = [_image("a.jpg", [[0, 0, 10, 10]], ["amy"])]
    r = check.compare_faces(ref, [_image("a.jpg", [[100, 100, 110, 110]], ["amy"])])
    assert not r["ok"] and "no candidate box with IoU" in r["problems"][0]
    r = check.compare_faces(ref, [_image("z.jpg", [[0, 0, 10, 10]], ["amy"])])
    assert not r["ok"] and r["problems"] == ["the image lists differ"]
    r = check.compare_faces(ref, [_image("a.jpg", [[0, 0, 10, 10]], ["amy"], error="2 faces")])
    assert not r["ok"] and "a.jpg: reference ok, candidate 2 faces" in r["problems"]


def test_image_list_is_fixed_and_enrollment_first():
    items = check.image_list()
    kinds = [k for k, _, _ in items]
    assert kinds[:24] == ["enroll"] * 24 and kinds.count("group") == 5 and kinds.count("lfw") == 10
    assert len({p for _, p, _ in items}) == len(items)


def test_image_list_exists_in_shared_data(data_root):
    missing = [p for _, p, _ in check.image_list() if not (data_root / p).is_file()]
    assert not missing


# ------------------------------------------------------------------- float32 edges of the int8 models
def test_to_steps_recovers_the_dequantized_integers_exactly():
    rng = np.random.default_rng(1)
    q = rng.integers(-128, 128, (1, 896, 16), dtype=np.int8)
    scale, zp = 1.1811023950576782, -3
    f = ((q.astype(np.float32) - zp) * np.float32(scale)).astype(np.float32)  # what DEQUANTIZE returns
    assert np.array_equal(check.to_steps(f, scale, zp, np.int8), q)
    # a float a last-ulp off (another platform's float multiply) still maps to the same integers
    assert np.array_equal(check.to_steps(np.nextafter(f, np.float32(np.inf)), scale, zp, np.int8), q)


def test_to_steps_refuses_values_off_the_grid_or_out_of_range():
    with pytest.raises(ValueError, match="off the grid"):
        check.to_steps(np.array([0.3], np.float32), 0.25, 0, np.int8)
    with pytest.raises(ValueError, match="outside int8"):
        check.to_steps(np.array([40.0], np.float32), 0.25, 0, np.int8)
    with pytest.raises(ValueError, match="scale"):
        check.to_steps(np.array([0.0], np.float32), 0.0, 0, np.int8)


def test_step_diff_integers_and_floats_in_steps():
    assert check.step_diff(np.array([-128, 5], np.int8), np.array([127, 5], np.int8)) == 255
    assert check.step_diff(np.array([3], np.uint8), np.array([2], np.uint8)) == 1  # no uint8 wraparound
    a = np.array([0.5, 1.0], np.float32)
    assert check.step_diff(a, a + np.float32(0.5), 0.25) == 2
    assert check.step_diff(a, a + np.float32(0.5), None) == 0.5
    assert check.step_diff(np.zeros(0, np.int8), np.zeros(0, np.int8)) == 0


def test_compare_ops_counts_a_float_edge_in_steps_of_its_integers():
    index = {"models": {"embedder": {"ops": [{"op": 0, "name": "DEQUANTIZE", "units": [0.25]},
                                             {"op": 1, "name": "CONV_2D", "units": [None]}]}}}
    meta = {"versions": {"runtime": "litert"}, "kernels": "optimized"}
    ref = {"meta": meta, "arrays": {"embedder:0:0:0": np.array([0.5], np.float32),
                                    "embedder:1:0:0": np.array([3], np.int8)}}
    one = {"meta": meta, "arrays": {"embedder:0:0:0": np.array([0.75], np.float32),
                                    "embedder:1:0:0": np.array([3], np.int8)}}
    c = check.compare_ops(index, ref, one)
    assert c["ok"] and c["roles"]["embedder"] == {"ops": 2, "identical": 1, "max_diff": 1}
    two = {"meta": meta, "arrays": dict(one["arrays"], **{"embedder:0:0:0": np.array([1.0], np.float32)})}
    c = check.compare_ops(index, ref, two)
    assert not c["ok"] and c["problems"] == ["embedder op 0 DEQUANTIZE: 2 steps > 1"]


def test_op_units():
    class Q:
        def __init__(self, scale):
            self.scale = scale

    class T:
        def __init__(self, type_, scale=None):
            self.type, self.quantization = type_, Q(scale) if scale is not None else None

    class Op:
        def __init__(self, inputs, outputs):
            self.inputs, self.outputs = inputs, outputs

    tensors = [T(9, [0.5]), T(0), T(9, [0.1]), T(0, [])]  # int8, float32, int8, float32
    assert check.op_units(tensors, Op([0], [1])) == [0.5]     # DEQUANTIZE: steps of its input
    assert check.op_units(tensors, Op([1], [2])) == [None]    # QUANTIZE: an integer output
    assert check.op_units(tensors, Op([-1, 3], [1])) == [0.0]  # float in, float out: as is


# ---------------------------------------------------------------------- the models of the default pipeline
def test_pipeline_models_of_the_default_configuration(tmp_path):
    index = {"int8": {"detector": "blazeface_short_range_int8.tflite", "embedder": "mobilefacenet_int8.tflite"},
             "detectors": {"short_range": {"int8": "blazeface_short_range_int8.tflite"},
                           "full_range": {"int8": "blazeface_full_range_int8.tflite"}},
             "detector_configs": {"auto": {"whole_frame": ["short_range", "full_range"], "tile_model": "full_range"}},
             "default_detector": "auto",
             "landmarks": {"default": "onet", "onet": {"int8": "onet_int8.tflite"}}}
    (tmp_path / "models.json").write_text(json.dumps(index))
    files = check.pipeline_models(tmp_path)
    assert {k: v.name for k, v in files.items()} == {
        "det_short_range": "blazeface_short_range_int8.tflite", "det_full_range": "blazeface_full_range_int8.tflite",
        "landmarks": "onet_int8.tflite", "embedder": "mobilefacenet_int8.tflite"}
    # an older folder: one detector, no landmark model
    index.pop("landmarks"), index.pop("default_detector"), index.pop("detector_configs")
    (tmp_path / "models.json").write_text(json.dumps(index))
    assert list(check.pipeline_models(tmp_path)) == ["det_short_range", "embedder"]


def test_landmark_shift_is_measured_between_matched_faces():
    ref = [_image("a.jpg", [[0, 0, 10, 10]], ["amy"], landmarks=[[[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]])]
    cand = [_image("a.jpg", [[0, 0, 10, 10]], ["amy"], landmarks=[[[1, 1], [2, 2.5], [3, 3], [4, 4], [5, 5]]])]
    r = check.compare_faces(ref, cand)
    assert r["ok"] and r["max_landmark_shift_px"] == pytest.approx(0.5)
    assert check.compare_faces([_image("a.jpg", [], [])], [_image("a.jpg", [], [])])["max_landmark_shift_px"] is None


# ------------------------------------------------------------------------- kernels and runtime verdicts
def _run(outputs, images, kernels="optimized", runtime="tflite_runtime", crops=3):
    meta = {"models": {"det_short_range": "d", "embedder": "e"}, "kernels": kernels, "cpu": {"sme": False},
            "groups": list(check.OUTPUT_GROUPS), "versions": {"runtime": runtime}, "images": images,
            "crops": [{}] * crops}
    return {"meta": meta, "arrays": outputs}


def _bumped(outputs, key, steps):
    out = {k: v.copy() for k, v in outputs.items()}
    v = out[key].astype(np.int16).reshape(-1)
    v[0] = v[0] + steps if v[0] < 127 - steps else v[0] - steps
    out[key] = v.astype(np.int8).reshape(out[key].shape)
    return out


def test_compare_refuses_other_kernels_and_skips_unchecked_crops():
    ref_out, images = _outputs(), [_image("a.jpg", [[0, 0, 10, 10]], ["amy"])]
    c = check.compare(_run(ref_out, images, "optimized"), _run(ref_out, images, "reference"))
    assert not c["ok"] and not c["values_only"] and "kernels" in c["problems"][0]
    # a candidate that checked the first 2 crops of 3 is compared on those 2
    two = {k: v for k, v in ref_out.items() if k != "emb_out:2"}
    c = check.compare(_run(ref_out, images), _run(two, images, crops=2))
    assert c["ok"] and c["raw"]["emb_out"]["tensors"] == 2


def test_runtime_passes_on_reference_kernels_only_when_optimized_differs_in_values():
    ref_out, images = _outputs(), [_image("a.jpg", [[0, 0, 10, 10]], ["amy"])]
    ref_opt, ref_ref = _run(ref_out, images), _run(ref_out, images, "reference")
    far = _run(_bumped(ref_out, "det_scores:0", 40), [_image("a.jpg", [[0, 0, 10, 10]], [None])])
    exact_ref = _run(ref_out, images, "reference")
    cands = {"arm64-tr": check.compare(ref_opt, far), "arm64-tr-reference": check.compare(ref_ref, exact_ref)}
    assert not cands["arm64-tr"]["ok"] and cands["arm64-tr"]["values_only"]
    v = check.runtime_verdicts(cands)["tflite_runtime"]
    assert v["ok"] and "kernel rounding" in v["how"]
    # without the reference run, or with a reference run 2 steps off, the runtime fails
    assert not check.runtime_verdicts({"arm64-tr": cands["arm64-tr"]})["tflite_runtime"]["ok"]
    off = check.compare(ref_ref, _run(_bumped(ref_out, "emb_out:1", 2), images, "reference"))
    v = check.runtime_verdicts({"arm64-tr": cands["arm64-tr"], "ref": off})["tflite_runtime"]
    assert not v["ok"] and v["how"] == "optimized and reference kernels out of tolerance"
    # reference kernels exact on every raw tensor, but one identity differs in its own pipeline: still a fail
    other_name = check.compare(ref_ref, _run(ref_out, [_image("a.jpg", [[0, 0, 10, 10]], ["raj"])], "reference"))
    v = check.runtime_verdicts({"arm64-tr": cands["arm64-tr"], "ref": other_name})["tflite_runtime"]
    assert not v["ok"] and "within tolerance on every raw tensor but the reference-kernel pipeline differs" in v["how"]
    # a fault that is not a value difference (other models) is never excused by the reference kernels
    other = _run(ref_out, images)
    other["meta"]["models"] = {"det_short_range": "d", "embedder": "x"}
    bad = check.compare(ref_opt, other)
    assert not bad["values_only"]
    assert not check.runtime_verdicts({"o": bad, "r": cands["arm64-tr-reference"]})["tflite_runtime"]["ok"]
    # optimized within tolerance: passes alone (LiteRT on arm64 is bit-exact)
    ok = check.compare(ref_opt, _run(_bumped(ref_out, "det_boxes:0", 1), images, runtime="litert"))
    assert check.runtime_verdicts({"arm64-litert": ok})["litert"] == {
        "ok": True, "how": "optimized kernels within tolerance", "candidates": ["arm64-litert"]}


def test_cli_bad_paths_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGEFACE_KERNELS", "optimized")  # run() sets it for its interpreters; undone after
    with pytest.raises(SystemExit) as exc:
        check.main(["compare", "--reference", str(tmp_path / "none.npz"), "--candidate", f"a={tmp_path}/b.npz"])
    assert exc.value.code == 2 and "--reference" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        check.main(["ops-run", "--ops", str(tmp_path), "--out", str(tmp_path / "o.npz")])
    assert exc.value.code == 2 and "no ops.json" in capsys.readouterr().err
    run = ["run", "--models", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "x.npz")]
    assert check.main(run) == 2
    err = capsys.readouterr().err
    assert "check.py run: error:" in err and "models.json" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------- single ops
@pytest.fixture(scope="module")
def ops_dir(models_dir, data_root, tmp_path_factory):
    pytest.importorskip("tensorflow")
    out = tmp_path_factory.mktemp("ops")
    check.split(models_dir, data_root, out)
    return out


@pytest.mark.slow  # needs built models
def test_single_op_models_compute_what_the_whole_model_computes(ops_dir, models_dir):
    """Op k run alone on its recorded inputs gives the same integers as inside the whole model (same kernels)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    index = json.loads((ops_dir / "ops.json").read_text())
    assert set(index["models"]) == {"det_short_range", "det_full_range", "landmarks", "embedder"}
    assert index["models"]["landmarks"]["samples"] == 2 and len(index["models"]["embedder"]["ops"]) > 100
    assert index["models"]["det_full_range"]["samples"] == 3
    dequantize = [o["units"] for o in index["models"]["det_full_range"]["ops"] if o["name"] == "DEQUANTIZE"]
    assert sorted(dequantize) == [[pytest.approx(0.0787, abs=1e-4)], [pytest.approx(1.2598, abs=1e-4)]]  # scores, boxes
    with np.load(ops_dir / "inputs.npz") as z:
        inputs = {k.replace("__", ":"): z[k] for k in z.files}
    builtin = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    for role, m in index["models"].items():
        whole = Interpreter(model_path=str(models_dir / m["file"]), experimental_preserve_all_tensors=True,
                            experimental_op_resolver_type=builtin, num_threads=1)
        whole.allocate_tensors()
        whole.set_tensor(whole.get_input_details()[0]["index"], inputs[f"{role}:0:0:0"])
        whole.invoke()
        ops = whole._get_ops_details()
        assert len(m["ops"]) == len(ops) > 30  # every op, the uint8 input and float32 output edges included
        assert ops[0]["op_name"] == "QUANTIZE" and "DEQUANTIZE" in {o["op_name"] for o in ops}
        for op in m["ops"]:
            single = Interpreter(model_path=str(ops_dir / op["file"]), experimental_op_resolver_type=builtin,
                                 num_threads=1)
            single.allocate_tensors()
            for j, d in enumerate(single.get_input_details()):
                single.set_tensor(d["index"], inputs[f"{role}:{op['op']}:0:{j}"])
            single.invoke()
            got = single.get_tensor(single.get_output_details()[0]["index"])
            assert op["name"] == ops[op["op"]]["op_name"]
            assert np.array_equal(got, whole.get_tensor(ops[op["op"]]["outputs"][0])), (role, op)


@pytest.mark.slow  # needs built models
def test_every_single_op_within_one_step_across_kernels(ops_dir, tmp_path):
    """On this machine, the deployed kernels (LiteRT + XNNPACK) and the reference kernels agree op by op
    within one step, although the whole int8 detector's outputs differ by tens of steps between them."""
    opt, ref = tmp_path / "opt.npz", tmp_path / "ref.npz"
    check.ops_run(ops_dir, opt, "optimized")
    check.ops_run(ops_dir, ref, "reference")
    index = json.loads((ops_dir / "ops.json").read_text())
    same = check.compare_ops(index, check._load_ops(opt), check._load_ops(opt))
    assert same["ok"] and same["worst"]["steps"] == 0
    c = check.compare_ops(index, check._load_ops(opt), check._load_ops(ref))
    assert c["ok"], c["problems"]
    assert c["worst"]["steps"] == 1  # the kernels do differ: the check is not comparing a run with itself
    assert c["roles"]["det_full_range"]["ops"] == len(index["models"]["det_full_range"]["ops"]) > 100
    assert c["roles"]["landmarks"]["ops"] > 30


# --------------------------------------------------------------------------- the whole proof (opt-in)
def _skip_reason() -> str | None:
    if os.environ.get("EDGEFACE_ARM64_PROOF") != "1":
        return ("arm64 proof runs only with EDGEFACE_ARM64_PROOF=1 "
                "(root, qemu-user-static, debootstrap, network; minutes)")
    if os.geteuid() != 0:
        return "arm64 proof needs root (debootstrap, chroot, binfmt_misc)"
    for tool in ("qemu-aarch64-static", "debootstrap"):
        if shutil.which(tool) is None:
            return f"arm64 proof needs {tool}: apt-get install qemu-user-static debootstrap"
    if os.uname().machine != "x86_64":
        return "arm64 proof compares arm64 with an x86_64 host"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
def test_arm64_proof(models_dir, data_root, tmp_path):
    out = tmp_path / "proof"
    r = subprocess.run([str(ARM64 / "prove.sh"), "--models", str(models_dir), "--data", str(data_root),
                        "--out", str(out)], capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and set(report["runtimes"]) == {"litert", "tflite_runtime"}
    assert {"arm64-litert", "arm64-tflite_runtime"} <= set(report["candidates"])
    ref_ids = report["reference"]["identities"]
    assert sum(n is not None for n in ref_ids) >= 16  # the held-out portraits and group faces are named
    # LiteRT (the recommended runtime) passes on the deployed kernels themselves
    assert report["runtimes"]["litert"]["how"] == "optimized kernels within tolerance"
    passing = [c for c in report["candidates"].values() if c["ok"]]
    assert any(c["versions"]["runtime"] == "tflite_runtime" for c in passing)
    for c in passing:
        assert all(g["max_diff"] <= 1 and g["tensors"] > 0 for g in c["raw"].values()), c["raw"]
        assert c["faces"]["count_mismatches"] == 0 and c["faces"]["identity_mismatches"] == 0
        assert c["versions"]["machine"] == "aarch64" and c["cpu"]["sme"] is False
    legacy = report["candidates"]["arm64-tflite_runtime"]["versions"]
    assert legacy["runtime"] == "tflite_runtime" and legacy["numpy"].startswith("1.")
    assert report["candidates"]["arm64-litert"]["versions"]["runtime"] == "litert"
