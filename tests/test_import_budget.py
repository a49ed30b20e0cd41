"""The core and device side must run without TensorFlow: prove it with TensorFlow made unimportable."""
import json
import subprocess
import sys
import textwrap

import pytest

FORBIDDEN = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "tf2onnx", "onnxruntime",
             "sklearn", "pandas", "matplotlib", "torch")
CORE_MODULES = ("edgeface", "edgeface.runtime", "edgeface.preprocess", "edgeface.manifest", "edgeface.blazeface",
                "edgeface.detect", "edgeface.embed", "edgeface.gallery", "edgeface.recognizer",
                "edgeface.evaluate", "edgeface.lfw", "edgeface.cli", "edgeface.device",
                "edgeface.device.config", "edgeface.device.sources", "edgeface.device.quality",
                "edgeface.device.tracker",
                "edgeface.device.decision", "edgeface.device.door", "edgeface.device.events", "edgeface.device.loop",
                "edgeface.device.app", "edgeface.device.enroll", "edgeface.device.kiosk", "edgeface.device.demo",
                "edgeface.device.cli", "edgeface.device.threshold", "edgeface.private",
                "edgeface.device.privacy", "edgeface.device.crypto")

BLOCKER = textwrap.dedent(f"""
    import sys, importlib.abc
    FORBIDDEN = {FORBIDDEN!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in FORBIDDEN:
                raise ImportError('import budget: ' + name + ' is not allowed on the device side')
            return None
    sys.meta_path.insert(0, Block())
""")


def _run(code: str):
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)


def test_core_imports_without_tensorflow():
    r = _run(f"""
        import importlib, json
        for m in {CORE_MODULES!r}:
            importlib.import_module(m)
        from edgeface import FaceRecognizer, Gallery  # lazy names resolve
        print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in FORBIDDEN
                                or k.split('.')[0] in ("gpiozero", "picamera2"))))
    """)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []  # gpiozero / picamera2 only imported lazily


def test_blocker_really_blocks():
    r = _run("import tensorflow")
    assert r.returncode != 0 and "import budget" in r.stderr


@pytest.mark.slow  # needs built models
def test_pipeline_runs_without_tensorflow(models_dir, data_root):
    image = data_root / "lfw" / "images_deepfunneled" / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"
    r = _run(f"""
        from edgeface import FaceRecognizer, read_image
        from edgeface.runtime import get_runtime
        rec = FaceRecognizer({str(models_dir)!r}, precision="int8")
        faces = rec.embed(read_image({str(image)!r}))
        print(get_runtime().name, len(faces), faces[0][1].shape[0])
        import json
        print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in FORBIDDEN)))
    """)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    name, n_faces, dim = lines[-2].split()
    assert name in ("litert", "tflite_runtime") and int(n_faces) >= 1 and int(dim) >= 128
    assert json.loads(lines[-1]) == []
