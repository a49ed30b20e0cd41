"""Signed person records and commands: what the hub publishes and the doors accept.

Every message from the hub is a JSON envelope ``{"body": {...}, "sig": "<base64 Ed25519 signature>"}``; the
signature covers the canonical JSON of ``body`` (sorted keys, no spaces, UTF-8). A door holds the hub's
*public* key only (``[site] hub_public_key``), so a door, or anyone else who can publish on the broker,
cannot forge a record: the broker ACL is one lock, the signature the second.

A person record (``body["type"] == "person"``)::

    {"type": "person", "site": "office", "id": "3f1c...", "name": "Ada", "version": 17, "deleted": false,
     "valid_from": null, "valid_until": null,          # optional unix seconds: access only in the window
     "embeddings": {"<embedder space id>": ["<base64 float32 little-endian>", ...], ...}}

``version`` is the hub's site-wide change counter: a door applies a record only when its version is higher
than the one it holds for that id, so replays and duplicates are harmless (idempotent). A tombstone is the
same record with ``"deleted": true`` and no embeddings: the door erases that person, their events and
snapshots. Keys: :func:`generate_key` writes ``hub_signing_key.pem`` (private, hub only) and
``hub_public_key.pem`` (copy to every door).
"""
from __future__ import annotations

import base64
import functools
import json
import math
import os
import re
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from edgeface.errors import EdgefaceError

MAX_NAME = 100
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class RecordError(EdgefaceError, ValueError):
    """A message from the hub is not acceptable (bad JSON, bad or missing signature, bad fields)."""


@functools.lru_cache(maxsize=None)
def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    except ImportError as exc:  # pragma: no cover - the [site] extra installs it
        raise RecordError("signed records need the 'cryptography' package: pip install 'edgeface[site]'") from exc
    return InvalidSignature, serialization, Ed25519PrivateKey, Ed25519PublicKey


def generate_key(folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``hub_signing_key.pem`` (mode 0600) and ``hub_public_key.pem``."""
    _, ser, Priv, _ = _crypto()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = Priv.generate()
    priv = folder / "hub_signing_key.pem"
    pub = folder / "hub_public_key.pem"
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def load_signing_key(path: str | os.PathLike):
    _, ser, Priv, _ = _crypto()
    try:
        key = ser.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise RecordError(f"cannot read the hub signing key {path}: {exc}") from exc
    if not isinstance(key, Priv):
        raise RecordError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike):
    _, ser, _, Pub = _crypto()
    try:
        key = ser.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise RecordError(f"cannot read the hub public key {path}: {exc}") from exc
    if not isinstance(key, Pub):
        raise RecordError(f"{path} is not an Ed25519 public key")
    return key


def canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(body: dict, key) -> bytes:
    """The signed envelope (bytes, ready to publish) of ``body``."""
    sig = key.sign(canonical(body))
    return json.dumps({"body": body, "sig": base64.b64encode(sig).decode()}, separators=(",", ":")).encode()


def open_signed(payload: bytes, public_key, max_bytes: int = 4_000_000) -> dict:
    """The verified ``body`` of an envelope, or :class:`RecordError` saying what is wrong (one line)."""
    InvalidSignature = _crypto()[0]
    if len(payload) > max_bytes:
        raise RecordError(f"payload of {len(payload)} bytes is over the {max_bytes}-byte limit")
    try:
        env = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"not JSON ({str(exc)[:80]})") from None
    if not isinstance(env, dict) or not isinstance(env.get("body"), dict):
        raise RecordError("not a signed envelope (no body)")
    sig = env.get("sig")
    if not isinstance(sig, str) or not sig:
        raise RecordError("unsigned (no sig)")
    try:
        public_key.verify(base64.b64decode(sig, validate=True), canonical(env["body"]))
    except (InvalidSignature, ValueError):
        raise RecordError("bad signature (not from this site's hub, or tampered)") from None
    return env["body"]


class PersonRecord(NamedTuple):
    site: str
    id: str
    name: str
    version: int
    deleted: bool
    valid_from: Optional[float]
    valid_until: Optional[float]
    embeddings: dict          #: space id -> list of base64 vectors (decoded by :func:`vectors`)

    def active(self, now: float) -> bool:
        """In its validity window (or no window)."""
        return not self.deleted and (self.valid_from is None or now >= self.valid_from) and \
            (self.valid_until is None or now < self.valid_until)


def _time(body: dict, key: str) -> Optional[float]:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RecordError(f"{key} must be unix seconds or null, got {v!r}")
    return float(v)


def person_record(body: dict) -> PersonRecord:
    """Validate a verified body as a person record."""
    if body.get("type") != "person":
        raise RecordError(f"not a person record (type {body.get('type')!r})")
    pid, name, version = body.get("id"), body.get("name"), body.get("version")
    if not isinstance(pid, str) or not _ID.match(pid):
        raise RecordError(f"bad person id {pid!r}")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise RecordError(f"bad name {str(name)[:40]!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RecordError(f"bad version {version!r}")
    deleted = body.get("deleted", False)
    if not isinstance(deleted, bool):
        raise RecordError("deleted must be true or false")
    emb = body.get("embeddings") or {}
    if not isinstance(emb, dict) or not all(isinstance(k, str) and isinstance(v, list) and
                                            all(isinstance(x, str) for x in v) for k, v in emb.items()):
        raise RecordError("embeddings must map an embedder space id to a list of base64 vectors")
    return PersonRecord(str(body.get("site", "")), pid, name.strip(), version, deleted, _time(body, "valid_from"),
                        _time(body, "valid_until"), emb)


def encode_vectors(vectors: np.ndarray) -> list[str]:
    return [base64.b64encode(np.asarray(v, "<f4").tobytes()).decode() for v in np.atleast_2d(vectors)]


def vectors(encoded: list[str], dim: int) -> np.ndarray:
    """(k, dim) float32 from base64 vectors; :class:`RecordError` for a wrong size or non-finite values."""
    out = []
    for s in encoded:
        try:
            raw = base64.b64decode(s, validate=True)
        except ValueError:
            raise RecordError("an embedding is not base64") from None
        if len(raw) != 4 * dim:
            raise RecordError(f"embedding of {len(raw) // 4} values, the door's embedder gives {dim}")
        v = np.frombuffer(raw, "<f4")
        if not np.all(np.isfinite(v)) or not np.any(v):
            raise RecordError("an embedding is zero or not finite")
        out.append(v)
    if not out:
        raise RecordError("a person record without embeddings for this space")
    return np.stack(out).astype(np.float32)
