"""ONNX Runtime behind the slice of the TFLite interpreter API that edgeface's wrappers use.

``edgeface onnx`` writes ``<model>.onnx`` (float) and ``<model>_qdq.onnx`` (QDQ int8) beside or below a models
folder. tf2onnx keeps the TFLite tensor names and the int8 model's quantized inputs and outputs, so the core's
``runtime.set_input`` / ``runtime.get_output`` work unchanged when they are given an :class:`OnnxInterpreter`:
the input is quantized and the outputs dequantized with the TFLite model's own scale and zero point, and
``FaceDetector`` / ``FaceEmbedder`` run the same pre- and post-processing as on LiteRT. Benchmark-only: the
device side never imports onnxruntime.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def onnx_path_for(tflite_path: Path, precision: str) -> Optional[Path]:
    """The ONNX export of a TFLite model, in its folder or its ``onnx/`` subfolder; ``None`` if not exported.

    >>> onnx_path_for(Path("/nowhere/facenet_msceleb_int8.tflite"), "int8") is None
    True
    """
    name = tflite_path.stem + ("_qdq.onnx" if precision == "int8" else ".onnx")
    for folder in (tflite_path.parent, tflite_path.parent / "onnx"):
        if (folder / name).is_file():
            return folder / name
    return None


class OnnxInterpreter:
    """An ``onnxruntime.InferenceSession`` answering ``get_input_details`` / ``set_tensor`` / ``invoke`` /
    ``get_output_details`` / ``get_tensor`` like the TFLite interpreter of the model it was exported from.

    Args:
      onnx_path: the export of the TFLite model that ``tflite_interpreter`` runs.
      tflite_interpreter: supplies the tensor details (names, shapes, dtypes, quantization).
      threads: ``intra_op_num_threads`` (one inference, one thread pool; inter-op parallelism off).
    """

    def __init__(self, onnx_path: Path, tflite_interpreter, threads: int):
        import onnxruntime as ort

        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # no busy-waiting after a run: the benchmark interleaves many sessions, and a pool spinning after its run
        # would steal the core from the next configuration
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self._inputs = tflite_interpreter.get_input_details()
        self._outputs = tflite_interpreter.get_output_details()
        onnx_inputs = [i.name for i in self.session.get_inputs()]
        onnx_outputs = {o.name for o in self.session.get_outputs()}
        if len(onnx_inputs) != len(self._inputs):
            raise ValueError(f"{onnx_path}: {len(onnx_inputs)} inputs, the TFLite model has {len(self._inputs)}")
        missing = [d["name"] for d in self._outputs if d["name"] not in onnx_outputs]
        if missing:
            raise ValueError(f"{onnx_path}: no outputs named {missing} (has {sorted(onnx_outputs)}); "
                             "export it again with `edgeface onnx`")
        self._input_name = {d["index"]: name for d, name in zip(self._inputs, onnx_inputs)}
        self._output_names = [d["name"] for d in self._outputs]
        self._output_slot = {d["index"]: i for i, d in enumerate(self._outputs)}
        self._feed: dict = {}
        self._results: list = []

    def allocate_tensors(self) -> None:
        """Nothing to do: ONNX Runtime allocates per run."""

    def get_input_details(self) -> list[dict]:
        return self._inputs

    def get_output_details(self) -> list[dict]:
        return self._outputs

    def set_tensor(self, index: int, value) -> None:
        self._feed[self._input_name[index]] = value

    def invoke(self) -> None:
        self._results = self.session.run(self._output_names, self._feed)

    def get_tensor(self, index: int):
        return self._results[self._output_slot[index]]
