"""Encryption at rest (optional): AES-256-GCM for snapshots and the gallery, with a key file or a systemd credential.

``[encryption] enabled = true`` with ``key_file`` (32 random bytes, 0600; ``edgeface-device key new PATH``) or
``credential`` (the name of a systemd credential: ``LoadCredentialEncrypted=NAME:/etc/edgeface/key.cred`` in the
unit, read from ``$CREDENTIALS_DIRECTORY/NAME``; the key is then sealed by the TPM or the host key and never
lies on disk in the clear).

* Snapshots are written as ``*.jpg.aesgcm``: ``MAGIC | 12-byte nonce | ciphertext+tag``, with the file name as
  associated data (a file renamed to pass as another event's snapshot fails to decrypt).
  ``edgeface-device decrypt FILE -o out.jpg`` reads one.
* The gallery file is one sealed SQLite image. It is decrypted into a private folder in RAM (``/dev/shm``, 0700)
  while in use and sealed again, atomically (temporary file, fsync, rename), after a change (enroll, forget,
  rename). Matching runs on the decrypted copy, so recognition is as fast as without encryption; a door started
  before an enrollment sees the new person after its restart.

``cryptography`` (``pip install 'edgeface[crypto]'``) is imported only when encryption is on.
What it protects: a stolen SD card or a copied backup. What it does not: an attacker with root on the running
device (the key and the decrypted gallery are in its memory).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from edgeface import private
from edgeface.errors import EdgefaceError

log = logging.getLogger(__name__)

MAGIC = b"EDGEFACE-AESGCM1"
NONCE_BYTES = 12
KEY_BYTES = 32
SNAPSHOT_SUFFIX = ".aesgcm"
GALLERY_AAD = b"edgeface-gallery"
RAM_DIR = "/dev/shm"


class CryptoError(EdgefaceError, RuntimeError):
    """No usable key, a missing ``cryptography`` package, or data that does not decrypt (wrong key, tampered)."""


class Cipher:
    """AES-256-GCM with a random 96-bit nonce per message (NIST SP 800-38D; fine far beyond 2**32 messages per key
    at a door's rate of events)."""

    def __init__(self, key: bytes):
        if len(key) != KEY_BYTES:
            raise CryptoError(f"the key must be {KEY_BYTES} bytes, got {len(key)}")
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:
            raise CryptoError("encryption needs the cryptography package: pip install 'edgeface[crypto]'") from exc
        self._aead = AESGCM(key)

    def seal(self, data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, data, aad)

    def open(self, blob: bytes, aad: bytes, what: str = "data") -> bytes:
        if not is_sealed(blob):
            raise CryptoError(f"{what} is not encrypted by edgeface")
        nonce = blob[len(MAGIC):len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES:], aad)
        except Exception as exc:  # cryptography raises InvalidTag
            raise CryptoError(f"{what} does not decrypt: wrong key, or the file was changed") from exc


def is_sealed(blob: bytes) -> bool:
    return blob[:len(MAGIC)] == MAGIC


def is_sealed_file(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            return is_sealed(fh.read(len(MAGIC)))
    except OSError:
        return False


def new_key(path: str | os.PathLike) -> Path:
    """Write a new random key to ``path`` (mode 0600, never overwriting a file)."""
    path = Path(path)
    try:
        private.write_private(path, os.urandom(KEY_BYTES))
    except FileExistsError:
        raise CryptoError(f"{path} exists; a key is never overwritten (its data would be lost)") from None
    return path


def read_key(path: str | os.PathLike) -> bytes:
    """The key in ``path``: 32 raw bytes (or 64 hex digits). A key file others can read is refused."""
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise CryptoError(f"cannot read key {path}: {exc.strerror or exc}") from exc
    if st.st_mode & 0o077:
        raise CryptoError(f"key {path} is readable by others (mode {st.st_mode & 0o777:o}): chmod 600 it")
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(data) != KEY_BYTES:
        raise CryptoError(f"key {path} must hold {KEY_BYTES} random bytes (edgeface-device key new), got {len(data)}")
    return data


def key_path(cfg) -> Path:
    """Where ``[encryption]`` says the key is: ``key_file``, or ``$CREDENTIALS_DIRECTORY/<credential>``."""
    if cfg.credential:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise CryptoError(f"[encryption] credential = {cfg.credential!r} but $CREDENTIALS_DIRECTORY is not set: "
                              "run under systemd with LoadCredentialEncrypted= (or use key_file)")
        return Path(directory) / cfg.credential
    if cfg.key_file:
        return Path(cfg.key_file)
    raise CryptoError("[encryption] enabled = true needs key_file or credential")


def make_cipher(cfg) -> Optional[Cipher]:
    """The cipher for ``[encryption]`` (a DeviceConfig section), or None when encryption is off."""
    if not cfg.enabled:
        return None
    return Cipher(read_key(key_path(cfg)))


def write_sealed(path: str | os.PathLike, blob: bytes) -> None:
    """Replace ``path`` atomically with ``blob`` (0600): a crash leaves the old or the new file, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        private.write_private(tmp, blob)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _ram_folder() -> Path:
    base = RAM_DIR if os.path.isdir(RAM_DIR) and os.access(RAM_DIR, os.W_OK) else None
    if base is None:
        log.warning("%s not available: the decrypted gallery is kept in the temporary folder", RAM_DIR)
    sweep_stale_ram_copies(base)
    return Path(tempfile.mkdtemp(prefix=f"edgeface-gallery-{os.getpid()}-", dir=base))


def sweep_stale_ram_copies(base: Optional[str] = None) -> int:
    """Delete decrypted gallery copies left by killed processes (their pid is gone); returns how many."""
    base = base or tempfile.gettempdir()
    n = 0
    for entry in Path(base).glob("edgeface-gallery-*-*"):
        try:
            pid = int(entry.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        n += 1
    return n


class SealedGallery:
    """An encrypted gallery file opened as a plain :class:`edgeface.Gallery` on a decrypted copy in RAM.

    ``with SealedGallery(path, cipher) as sg: g = sg.open(embedder_id, dim)`` ... changes are sealed back into
    ``path`` by :meth:`close` when ``write`` is true. A missing file starts an empty gallery (enrollment).
    """

    def __init__(self, path: str | os.PathLike, cipher: Cipher, write: bool = False):
        self.path, self.cipher, self.write = Path(path), cipher, write
        self.folder: Optional[Path] = None
        self.plain: Optional[Path] = None
        self.gallery = None
        self.folder = _ram_folder()
        self.plain = self.folder / "gallery.db"
        if self.path.is_file():
            blob = self.path.read_bytes()
            if not is_sealed(blob):
                self.close(save=False)
                raise CryptoError(f"gallery {self.path} is not encrypted but [encryption] is on: encrypt it with "
                                  "`edgeface-device gallery encrypt`")
            try:
                private.write_private(self.plain, self.cipher.open(blob, GALLERY_AAD, f"gallery {self.path}"))
            except BaseException:
                self.close(save=False)
                raise

    def open(self, embedder_id: Optional[str] = None, dim: Optional[int] = None):
        from edgeface.gallery import Gallery

        if embedder_id is None:
            self.gallery = Gallery.open(self.plain)
        else:
            self.gallery = Gallery(self.plain, embedder_id, dim)
        return self.gallery

    def close(self, save: Optional[bool] = None) -> None:
        save = self.write if save is None else save
        try:
            if self.gallery is not None:
                self.gallery.close()
                self.gallery = None
            if save and self.plain is not None and self.plain.is_file():
                write_sealed(self.path, self.cipher.seal(self.plain.read_bytes(), GALLERY_AAD))
        finally:
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder = None

    def __enter__(self) -> "SealedGallery":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(save=None if exc_type is None else False)


@contextlib.contextmanager
def gallery_file(path: str | os.PathLike, cipher: Optional[Cipher] = None, embedder_id: Optional[str] = None,
                 dim: Optional[int] = None, write: bool = False) -> Iterator:
    """A gallery file opened as a :class:`edgeface.Gallery`: plain (``cipher`` None) or decrypted in RAM.

    ``write``: an encrypted gallery's changes are sealed back on a clean exit. Without ``embedder_id`` the gallery
    must exist (``Gallery.open``).
    """
    from edgeface.gallery import Gallery

    if cipher is None:
        g = Gallery.open(path) if embedder_id is None else Gallery(path, embedder_id, dim)
        with g:
            yield g
        return
    if embedder_id is None and not Path(path).is_file():
        raise CryptoError(f"{path}: no such gallery file")
    with SealedGallery(path, cipher, write=write) as sg:
        yield sg.open(embedder_id, dim)


def encrypt_gallery_file(path: str | os.PathLike, cipher: Cipher) -> int:
    """Encrypt a plain gallery file in place (checkpointed first); returns its size. The plain file is replaced
    atomically; its WAL side files are removed."""
    import sqlite3

    path = Path(path)
    if is_sealed_file(path):
        raise CryptoError(f"{path} is already encrypted")
    from edgeface.gallery import Gallery

    Gallery.read_meta(path)  # an edgeface gallery, or GalleryError
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()
    data = path.read_bytes()
    write_sealed(path, cipher.seal(data, GALLERY_AAD))
    for side in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(path) + side)
    return len(data)
