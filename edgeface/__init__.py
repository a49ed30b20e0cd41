"""edgeface: face recognition for the edge (int8 TFLite, Raspberry Pi, Coral).

    >>> from edgeface import FaceRecognizer, Gallery, read_image
    >>> rec = FaceRecognizer("models")                 # built by `edgeface build --out models`
    >>> rec.verify(read_image("a.jpg"), read_image("b.jpg"))

Importing the package is cheap: the public names load their modules on first use.
"""
__version__ = "0.1.0"

_LAZY = {
    "FaceRecognizer": "recognizer", "Verification": "recognizer", "Identity": "recognizer",
    "Face": "detect", "FaceDetector": "detect", "FaceEmbedder": "embed",
    "Gallery": "gallery", "Match": "gallery", "read_image": "preprocess", "ImageError": "preprocess",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'edgeface' has no attribute {name!r}")
