"""Full-integer int8 conversion shared by every model ``edgeface build`` writes, and its app-facing interface.

Every op inside an int8 model is int8. Its *interface* is what Android apps accept (MediaPipe Tasks
``FaceDetector`` / ``ImageEmbedder`` and the TFLite Task Library want a uint8 or float32 image and uint8 or
float32 outputs, never int8):

* **input uint8**: the converter puts one ``QUANTIZE`` uint8 -> int8 in front, with the same scale and the
  zero point shifted by 128 (exact: it flips the top bit);
* **outputs float32** through one final ``DEQUANTIZE`` per output (``scale * (q - zero_point)``, the same
  float32 arithmetic the edgeface runtime does itself on an int8 output).

The Edge TPU compiler maps the uint8 input's ``QUANTIZE`` and every int8 op (one partition) and leaves the
final ``DEQUANTIZE`` on the CPU, so the same file serves the Coral too. :func:`int8_io` strips the boundary
ops back off (today's int8-in / int8-out interface, bit-identical inside) for the latency comparison and
for pipelines written against int8 tensors (``edgeface variants --variants int8_io``).
"""
from __future__ import annotations

from typing import Callable, Iterable

#: The interface of every int8 model edgeface builds.
INPUT_TYPE = "uint8"
OUTPUT_TYPE = "float32"
_INT8, _UINT8, _FLOAT32 = 9, 3, 0  # TFLite TensorType


def configure_full_int8(converter, representative_dataset: Callable[[], Iterable],
                        input_type: str = INPUT_TYPE, output_type: str = OUTPUT_TYPE) -> None:
    """Set ``converter`` (a ``TFLiteConverter``) for full-integer int8 with the app-facing interface.

    ``representative_dataset`` yields ``[x]`` lists of normalized float inputs (the calibration set).
    ``input_type``: ``uint8`` (default) or ``int8``; ``output_type``: ``float32`` (default), ``uint8`` or
    ``int8``.
    """
    import tensorflow as tf

    types = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}
    if input_type not in ("int8", "uint8"):
        raise ValueError(f"input_type must be 'int8' or 'uint8', got {input_type!r}")
    if output_type not in types:
        raise ValueError(f"output_type must be one of {sorted(types)}, got {output_type!r}")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = types[input_type]
    converter.inference_output_type = types[output_type]


def int8_io(tflite: bytes) -> bytes:
    """The same model with int8 input and int8 outputs: the boundary ``QUANTIZE`` / ``DEQUANTIZE`` removed.

    The int8 tensors they connected become the graph's inputs and outputs and take over their names, so a
    manifest's output names stay valid. Nothing inside changes (weights, scales, op order).
    """
    from tensorflow.lite.tools import flatbuffer_utils

    from .tflite_rebuild import op_names

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    sg = model.subgraphs[0]
    kinds = op_names(model)
    remap: dict[int, int] = {}  # boundary tensor -> the int8 tensor that replaces it
    drop = set()
    for k, op in enumerate(sg.operators):
        src, dst = int(op.inputs[0]), int(op.outputs[0])
        if kinds[k] == "QUANTIZE" and src in sg.inputs and sg.tensors[dst].type == _INT8:
            remap[src] = dst
        elif kinds[k] == "DEQUANTIZE" and dst in sg.outputs and sg.tensors[src].type == _INT8:
            remap[dst] = src
        else:
            continue
        drop.add(k)
    if not drop:
        raise ValueError("no boundary QUANTIZE/DEQUANTIZE ops: the model already has an int8 interface")
    for old, new in remap.items():
        sg.tensors[new].name = sg.tensors[old].name
    sg.operators = [op for k, op in enumerate(sg.operators) if k not in drop]
    sg.inputs = [remap.get(int(t), int(t)) for t in sg.inputs]
    sg.outputs = [remap.get(int(t), int(t)) for t in sg.outputs]
    for sig in model.signatureDefs or []:
        for tm in list(sig.inputs or []) + list(sig.outputs or []):
            tm.tensorIndex = remap.get(tm.tensorIndex, tm.tensorIndex)
    _drop_unused_tensors(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _drop_unused_tensors(model) -> None:
    """Remove the tensors no op and no graph input/output refers to, renumbering every reference."""
    sg = model.subgraphs[0]
    used = {int(t) for op in sg.operators for t in list(op.inputs) + list(op.outputs) if int(t) >= 0}
    used |= {int(t) for t in list(sg.inputs) + list(sg.outputs)}
    new = {old: i for i, old in enumerate(sorted(used))}
    sg.tensors = [t for i, t in enumerate(sg.tensors) if i in new]
    for op in sg.operators:
        op.inputs = [new[int(t)] if int(t) >= 0 else int(t) for t in op.inputs]
        op.outputs = [new[int(t)] for t in op.outputs]
    sg.inputs = [new[int(t)] for t in sg.inputs]
    sg.outputs = [new[int(t)] for t in sg.outputs]
    for sig in model.signatureDefs or []:
        for tm in list(sig.inputs or []) + list(sig.outputs or []):
            tm.tensorIndex = new[tm.tensorIndex]


def interface(model_path) -> dict:
    """``{"input": dtype, "outputs": [dtype, ...]}`` of a .tflite file (LiteRT, no TensorFlow)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(model_path))
    return {"input": it.get_input_details()[0]["dtype"].__name__,
            "outputs": [d["dtype"].__name__ for d in it.get_output_details()]}
