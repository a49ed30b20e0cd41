"""TFLite metadata (the ``TFLITE_METADATA`` flatbuffer that LiteRT and Android tooling read) for edgeface models.

``tflite-support``'s metadata writers are not used: its wheels pin ``protobuf<4``, which TensorFlow 2.21
cannot share an environment with. The metadata is a small flatbuffer (schema ``metadata_schema.fbs``,
file identifier ``M001``); this module writes the tables it needs with the ``flatbuffers`` builder, field
slots as in the schema:

* ``ModelMetadata``: name, description, version (converter), author, license, ``min_parser_version``;
* one ``SubGraphMetadata``: input tensor ``image`` (``ImageProperties`` RGB + default size,
  ``NormalizationOptions`` mean/std, ``Stats`` min/max of the normalized input) and one
  ``TensorMetadata`` per output in the model's output order (``boxes``/``scores`` or ``embedding``) with
  descriptions; a ``CustomMetadata`` ``edgeface_manifest`` holding the manifest (without its sha256, which
  changes when the metadata is written).

The metadata buffer is attached to the model (``Model.metadata`` entry ``TFLITE_METADATA``), the file is
replaced atomically and the manifest's sha256 updated. :func:`read_metadata` parses it back.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from flatbuffers import table as fb_table

from edgeface.errors import EdgefaceError
from edgeface.manifest import INDEX, read_manifest, write_manifest

from . import common

log = logging.getLogger(__name__)

METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
#: CustomMetadata in SubGraphMetadata needs parser 1.5.0 (schema history).
MIN_PARSER_VERSION = "1.5.0"
_CONTENT_FEATURE, _CONTENT_IMAGE = 1, 2  # ContentProperties union
_PU_NORMALIZATION = 1  # ProcessUnitOptions union
_RGB = 1

OUTPUT_DESCRIPTIONS = {
    "boxes": "BlazeFace raw box regressors per anchor: 16 values (box centre offset x, y, width, height, then "
             "6 keypoints x, y), in input pixels relative to the anchor; decode with the SSD anchors",
    "scores": "BlazeFace raw score logit per anchor; sigmoid gives the face probability",
    "embedding": "face embedding, not normalized: L2-normalize it (MediaPipe ImageEmbedder l2_normalize=True); "
                 "when the manifest has an embedding_mean, subtract it and L2-normalize again; then two faces "
                 "are the same person when their cosine similarity (dot product) reaches the manifest's "
                 "min_cosine_similarity",
}


class MetadataError(EdgefaceError, ValueError):
    """Model metadata missing or malformed; the message names the file."""


# --------------------------------------------------------------------------- writing
def _string(b: flatbuffers.Builder, s: str) -> int:
    return b.CreateString(s)


def _floats(b: flatbuffers.Builder, values) -> int:
    values = [float(v) for v in values]
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(v)
    return b.EndVector()


def _offsets(b: flatbuffers.Builder, offsets) -> int:
    b.StartVector(4, len(offsets), 4)
    for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _bytes(b: flatbuffers.Builder, data: bytes) -> int:
    b.StartVector(1, len(data), 16)  # force_align: 16
    b.head = b.head - len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    return b.EndVector()


def _table(b: flatbuffers.Builder, nfields: int, offsets: dict[int, int] = None, ubytes: dict[int, int] = None,
           uints: dict[int, int] = None) -> int:
    b.StartObject(nfields)
    for slot, value in (uints or {}).items():
        b.PrependUint32Slot(slot, value, 0)
    for slot, off in (offsets or {}).items():
        b.PrependUOffsetTRelativeSlot(slot, off, 0)
    for slot, value in (ubytes or {}).items():
        b.PrependUint8Slot(slot, value, 0)
    return b.EndObject()


def _tensor(b, name: str, description: str, image: tuple[int, int] | None = None,
            norm: tuple[list, list] | None = None, stats: tuple[list, list] | None = None) -> int:
    name_o, desc_o = _string(b, name), _string(b, description)
    if image is not None:
        size = _table(b, 2, uints={0: image[0], 1: image[1]})
        props = _table(b, 2, offsets={1: size}, ubytes={0: _RGB})
        content = _table(b, 3, offsets={1: props}, ubytes={0: _CONTENT_IMAGE})
    else:
        props = _table(b, 0)
        content = _table(b, 3, offsets={1: props}, ubytes={0: _CONTENT_FEATURE})
    fields = {0: name_o, 1: desc_o, 3: content}
    if norm is not None:
        opts = _table(b, 2, offsets={0: _floats(b, norm[0]), 1: _floats(b, norm[1])})
        unit = _table(b, 2, offsets={1: opts}, ubytes={0: _PU_NORMALIZATION})
        fields[4] = _offsets(b, [unit])
    if stats is not None:
        fields[5] = _table(b, 2, offsets={0: _floats(b, stats[0]), 1: _floats(b, stats[1])})
    return _table(b, 7, offsets=fields)


def build_metadata(manifest: dict, output_keys: list[str]) -> bytes:
    """The metadata flatbuffer for a model described by ``manifest`` whose outputs are ``output_keys``."""
    b = flatbuffers.Builder(1024)
    inp = manifest["input"]
    _, h, w, c = inp["shape"]
    mean, std = float(inp["mean"]), float(inp["std"])
    in_desc = f"RGB image {w}x{h}, normalized as (pixel - {mean:g}) / {std:g}"
    if inp["dtype"] == "uint8":
        in_desc += ("; the uint8 input tensor folds this normalization into its scale and zero point: feed the "
                    "RGB pixels 0..255 as they are (MediaPipe Tasks and the TFLite Task Library do)")
    elif inp["dtype"] == "int8":
        in_desc += ("; the int8 input tensor folds this normalization into its scale and zero point: feed "
                    "round(normalized / scale) + zero_point")
    role = manifest["role"]
    if role == "embedder":
        crop = manifest["embedder"]["crop"]
        recipe = json.dumps({k: v for k, v in crop.items() if k != "source"})
        in_desc += f"; face crop recipe {crop['method']} ({recipe})"
    elif role == "landmarks":
        crop = manifest["landmarks"]["crop"]
        recipe = json.dumps({k: v for k, v in crop.items() if k != "source"})
        in_desc += (f"; the square of {crop['scale']:g} detector-box widths centred on the box centre moved down "
                    f"by {crop['shift_y']:g} box widths (negative: up), area-resized to {crop['size']} px, black "
                    f"outside the image: crop recipe {crop['method']} ({recipe})")
    else:
        in_desc += "; the whole frame letterboxed to a square"
    # a manifest that says what its outputs mean (landmark models) is the authority; else the known roles'
    meanings = dict(OUTPUT_DESCRIPTIONS, **manifest.get(role, {}).get("output_meaning", {}))
    image = _tensor(b, "image", in_desc, image=(int(w), int(h)), norm=([mean] * c, [std] * c),
                    stats=([(255.0 - mean) / std] * c, [(0.0 - mean) / std] * c))
    outs = [_tensor(b, k, meanings.get(k, k)) for k in output_keys]
    custom_manifest = {k: v for k, v in manifest.items() if k not in ("sha256", "model_file")}
    custom = _table(b, 2, offsets={0: _string(b, "edgeface_manifest"),
                                   1: _bytes(b, json.dumps(custom_manifest, sort_keys=True).encode())})
    sub = _table(b, 10, offsets={
        0: _string(b, f"{manifest['family']} {manifest['role']}"),
        1: _string(b, manifest.get("description", manifest["family"])),
        2: _offsets(b, [image]), 3: _offsets(b, outs), 9: _offsets(b, [custom])})
    name = f"edgeface {manifest['family']} {manifest['role']} ({manifest['precision']})"
    desc = manifest.get("description") or f"{manifest['family']} face {manifest['role']}"
    root = _table(b, 8, offsets={
        0: _string(b, name), 1: _string(b, desc), 2: _string(b, manifest.get("converter_version", "")),
        3: _offsets(b, [sub]), 4: _string(b, "edgeface"), 5: _string(b, manifest.get("license", "")),
        7: _string(b, MIN_PARSER_VERSION)})
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def _output_keys(model_path: Path, manifest: dict) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    by_name = {v: k for k, v in manifest["outputs"].items()}
    keys = []
    for d in Interpreter(str(model_path)).get_output_details():
        if d["name"] not in by_name:
            raise MetadataError(f"{model_path}: output {d['name']!r} is not named in its manifest")
        keys.append(by_name[d["name"]])
    return keys


def attach(tflite: bytes, metadata: bytes) -> bytes:
    """``tflite`` with ``metadata`` as its ``TFLITE_METADATA`` buffer (replacing an existing one)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    buf = schema.BufferT()
    buf.data = np.frombuffer(metadata, np.uint8)
    for entry in model.metadata or []:
        if entry.name.decode() == METADATA_NAME:
            model.buffers[entry.buffer] = buf
            break
    else:
        model.buffers.append(buf)
        entry = schema.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(model.buffers) - 1
        model.metadata = (model.metadata or []) + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def write_metadata(model_path: str | os.PathLike) -> Path:
    """Write TFLite metadata into a built model (atomically) and update its manifest's sha256."""
    model_path = Path(model_path)
    manifest = read_manifest(model_path)  # also proves the file is intact before we touch it
    data = attach(model_path.read_bytes(), build_metadata(manifest, _output_keys(model_path, manifest)))
    common.atomic_write_bytes(model_path, data)
    write_manifest(model_path, {k: v for k, v in manifest.items() if k not in ("sha256", "model_file")})
    log.info("%s: TFLite metadata written", model_path.name)
    return model_path


def default_models(models_dir: str | os.PathLike) -> list[Path]:
    """Every model listed in a models folder's index (float32, int8 and variants)."""
    return common.index_models(models_dir)


# --------------------------------------------------------------------------- reading
class _T:
    """Minimal read access to a flatbuffer table (field slots as in the schema)."""

    def __init__(self, buf: bytes, pos: int):
        self.t = fb_table.Table(bytearray(buf) if not isinstance(buf, bytearray) else buf, pos)

    def _off(self, slot: int) -> int:
        return self.t.Offset(4 + 2 * slot)

    def string(self, slot: int):
        o = self._off(slot)
        return self.t.String(o + self.t.Pos).decode() if o else None

    def ubyte(self, slot: int) -> int:
        o = self._off(slot)
        return self.t.Get(flatbuffers.number_types.Uint8Flags, o + self.t.Pos) if o else 0

    def uint(self, slot: int) -> int:
        o = self._off(slot)
        return self.t.Get(flatbuffers.number_types.Uint32Flags, o + self.t.Pos) if o else 0

    def table(self, slot: int):
        o = self._off(slot)
        return _T(self.t.Bytes, self.t.Indirect(o + self.t.Pos)) if o else None

    def tables(self, slot: int) -> list:
        o = self._off(slot)
        if not o:
            return []
        start, n = self.t.Vector(o), self.t.VectorLen(o)
        return [_T(self.t.Bytes, self.t.Indirect(start + 4 * i)) for i in range(n)]

    def floats(self, slot: int) -> list[float]:
        o = self._off(slot)
        if not o:
            return []
        return [float(v) for v in self.t.GetVectorAsNumpy(flatbuffers.number_types.Float32Flags, o)]

    def data(self, slot: int) -> bytes:
        o = self._off(slot)
        return bytes(self.t.GetVectorAsNumpy(flatbuffers.number_types.Uint8Flags, o)) if o else b""


def _tensor_dict(t: _T) -> dict:
    out: dict[str, Any] = {"name": t.string(0), "description": t.string(1)}
    content = t.table(3)
    if content is not None:
        kind = content.ubyte(0)
        out["content"] = {_CONTENT_IMAGE: "image", _CONTENT_FEATURE: "feature"}.get(kind, f"type {kind}")
        props = content.table(1)
        if kind == _CONTENT_IMAGE and props is not None:
            size = props.table(1)
            out["color_space"] = {1: "RGB", 2: "GRAYSCALE"}.get(props.ubyte(0), "UNKNOWN")
            if size is not None:
                out["default_size"] = [size.uint(0), size.uint(1)]
    for unit in t.tables(4):
        if unit.ubyte(0) == _PU_NORMALIZATION:
            opts = unit.table(1)
            out["normalization"] = {"mean": opts.floats(0), "std": opts.floats(1)}
    stats = t.table(5)
    if stats is not None:
        out["stats"] = {"max": stats.floats(0), "min": stats.floats(1)}
    return out


def parse_metadata(buf: bytes) -> dict:
    """The metadata flatbuffer as a dict (the fields edgeface writes)."""
    if len(buf) < 8 or buf[4:8] != FILE_IDENTIFIER:
        raise MetadataError(f"not a TFLite metadata buffer (identifier {bytes(buf[4:8])!r}, want {FILE_IDENTIFIER!r})")
    root = _T(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, bytearray(buf), 0))
    subs = []
    for sg in root.tables(3):
        custom = {}
        for cm in sg.tables(9):
            raw = cm.data(1)
            try:
                custom[cm.string(0)] = json.loads(raw)
            except ValueError:
                custom[cm.string(0)] = raw.hex()
        subs.append({"name": sg.string(0), "description": sg.string(1),
                     "inputs": [_tensor_dict(t) for t in sg.tables(2)],
                     "outputs": [_tensor_dict(t) for t in sg.tables(3)], "custom": custom})
    return {"name": root.string(0), "description": root.string(1), "version": root.string(2),
            "author": root.string(4), "license": root.string(5), "min_parser_version": root.string(7),
            "subgraphs": subs}


def metadata_buffer(model_path: str | os.PathLike) -> bytes:
    """The raw ``TFLITE_METADATA`` buffer of a .tflite file (read-only flatbuffer access, no copy of weights)."""
    schema = common.tflite_schema()
    model_path = Path(model_path)
    data = model_path.read_bytes()
    if data[4:8] != b"TFL3":
        raise MetadataError(f"{model_path}: not a TFLite flatbuffer")
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_NAME:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    raise MetadataError(f"{model_path}: no {METADATA_NAME} metadata; write it with `edgeface metadata write`")


def read_metadata(model_path: str | os.PathLike) -> dict:
    """Parse a model's TFLite metadata back into a dict."""
    try:
        return parse_metadata(metadata_buffer(model_path))
    except MetadataError as exc:
        if str(model_path) in str(exc):
            raise
        raise MetadataError(f"{model_path}: {exc}") from exc


__all__ = ["write_metadata", "read_metadata", "build_metadata", "parse_metadata", "attach", "MetadataError",
           "INDEX"]
