"""The gallery: the people a device knows, stored on the device in SQLite.

A face embedder turns a face into a vector (an *embedding*); two photos of
the same person give vectors that point in nearly the same direction.  The
gallery remembers one or more embeddings per enrolled person and answers
"who is this?" by comparing a new embedding with all of them::

    from edgeface.gallery import Gallery

    with Gallery("people.db", embedder_id="facenet-int8-v1", dim=128) as g:
        g.enroll("Ada", ada_embeddings)           # (k, 128) or (128,)
        print(g.match(probe, k=3))                 # three nearest people
        print(g.identify(probe, min_cosine_similarity=0.55))

Similarity is the *cosine similarity* (1 = same direction, 0 = unrelated,
-1 = opposite).  Every embedding is L2-normalized before it is stored, so the
cosine is a plain dot product and matching is one matrix-vector product.

Embeddings from different models (or different conversions of one model) are
not comparable, so the database records which embedder filled it and refuses
to be opened with another one (:class:`EmbedderMismatchError`).

Durability: the database runs in WAL mode with ``synchronous=FULL`` and every
write (an enrollment, a rename, a removal) is a single transaction.  A
process killed mid-enrollment - or a Raspberry Pi losing power - leaves every
committed person intact and never a half-enrolled one.

Names are what people see on a screen or in a log, so a new name must follow one rule
(:func:`check_name`): 1 to :data:`MAX_NAME_LENGTH` printable characters, any script; no line breaks,
control characters, escape sequences or invisible formatting characters; surrounding spaces are trimmed.
Galleries written by older versions may hold other names: print them through :func:`escape_name`.

Privacy: the file holds biometric data. It is created readable by its owner only (0600; a folder edgeface
has to create is 0700) and tightened with a warning when it is opened with wider permissions. Deleted
rows are overwritten (``secure_delete``); :meth:`Gallery.forget` also truncates the write-ahead log so no
copy of the person's embeddings is left in the gallery's files. The image files embeddings came from are
stored only when the caller passes ``sources``.

Broken files: the first write through a :class:`Gallery` runs SQLite's ``quick_check`` and a corrupt
gallery refuses every write (:class:`CorruptGalleryError`); :func:`check_gallery` runs the same check for
``doctor``. A full disk, a read-only file or a damaged page is a :class:`GalleryError` with one clear line,
and nothing is half-written.

Only the standard library and numpy are used.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
from datetime import datetime, timezone
from typing import Callable, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np

from . import _sqlite
from .errors import EdgefaceError, OptionError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PathLike = Union[str, "os.PathLike[str]"]

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE people (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL
);
CREATE TABLE embeddings (
    id        INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    vector    BLOB NOT NULL,
    source    TEXT
);
CREATE INDEX embeddings_person ON embeddings(person_id);
"""


class GalleryError(EdgefaceError):
    """Base class for every error raised by this module."""


class EmbedderMismatchError(GalleryError):
    """The gallery was built with a different embedder (or dimension)."""


class UnknownPersonError(GalleryError, KeyError):
    """The named person is not enrolled."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return Exception.__str__(self)


class PersonExistsError(GalleryError):
    """The target name of a rename is already enrolled."""


class InvalidNameError(GalleryError, ValueError):
    """A new person name breaks the naming rule (see :func:`check_name`)."""


class CorruptGalleryError(GalleryError):
    """SQLite found damage in the gallery file; writes are refused (restore a backup or re-enroll)."""


#: Longest person name accepted for a new enrollment or a rename, in characters.
MAX_NAME_LENGTH = 64


def check_name(name: object) -> str:
    """The name to store for ``name``, or :class:`InvalidNameError` saying which rule it breaks.

    The rule: after trimming surrounding spaces, 1 to :data:`MAX_NAME_LENGTH` characters, every one printable
    (``str.isprintable``: letters and digits of any script, punctuation, symbols and the plain space). Line
    breaks, tabs, ANSI escape sequences, bidirectional overrides and zero-width characters are refused: they
    let a name forge or hide lines in a log or a terminal.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"a name must be a string, got {type(name).__name__}")
    stripped = name.strip()
    if not stripped:
        raise InvalidNameError("a name must not be empty")
    if len(stripped) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"name '{escape_name(stripped, 40)}' is {len(stripped)} characters long; "
                               f"at most {MAX_NAME_LENGTH} are allowed")
    bad = next((c for c in stripped if not c.isprintable()), None)
    if bad is not None:
        raise InvalidNameError(f"name '{escape_name(stripped)}' contains the non-printable character "
                               f"{escape_name(bad)} (U+{ord(bad):04X}); names are printable text on one line")
    return stripped


def escape_name(text: object, max_length: int = 80) -> str:
    """``text`` (a name, or any stored text: an event's detail, a file name) made safe to print on one line
    of a terminal or a log.

    Non-printable characters (line breaks, tabs, ANSI escapes, bidi overrides, zero-width and other format
    characters, unusual spaces...) become Python escapes such as ``\\n``, ``\\x1b`` or ``\\u202e``, a
    backslash is doubled (so an escape cannot be faked), and a result longer than ``max_length`` characters
    is cut with ``…`` (never inside an escape). Use it for every name read from a gallery or an event log:
    galleries written before names were checked may hold anything (a 10 kB name prints as ``max_length``
    characters). The core CLI and ``edgeface-device`` both print through it.

    >>> escape_name("ada\\n2026-01-01 grant mallory\\x1b[2J")
    'ada\\\\n2026-01-01 grant mallory\\\\x1b[2J'
    """
    max_length = max(1, int(max_length))
    out, used = [], 0
    for c in str(text):
        piece = c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
        if used + len(piece) > max_length:
            while used > max_length - 1:  # room for the marker (max_length 1: the marker alone)
                used -= len(out.pop())
            out.append("…")
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


class Match(NamedTuple):
    """One answer to "who is this?".

    ``name`` is the enrolled person's name, or ``None`` for "unknown";
    ``similarity`` is the cosine similarity of the best of their embeddings.
    """

    name: Optional[str]
    similarity: float


def check_threshold(min_cosine_similarity: object) -> float:
    """``min_cosine_similarity`` as a float, or :class:`OptionError` unless it is a number in [-1, 1]."""
    t = min_cosine_similarity
    if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)) \
            or not -1.0 <= float(t) <= 1.0:
        raise OptionError(f"min_cosine_similarity must be a number in [-1, 1], got {t!r}")
    return float(t)


def best_match(top: Sequence[Match], min_cosine_similarity: float) -> Match:
    """:meth:`Gallery.identify`'s answer from :meth:`Gallery.match`'s list (best first): the best person at or
    above the threshold, else ``Match(None, best similarity)``; ``Match(None, nan)`` for an empty list."""
    t = check_threshold(min_cosine_similarity)
    if not top:
        return Match(None, math.nan)
    return top[0] if top[0].similarity >= t else Match(None, top[0].similarity)


class Person(NamedTuple):
    """An enrolled person: name, how many embeddings, creation time (ISO 8601, UTC)."""

    name: str
    num_embeddings: int
    created: str


class Forgotten(NamedTuple):
    """What :meth:`Gallery.forget` (or :meth:`Gallery.remove`) erased for one person."""

    name: str
    embeddings: int
    sources: list


class Change(NamedTuple):
    """One write of :meth:`Gallery.apply`: ``name`` ends up with exactly ``embeddings`` (a (k, dim) or (dim,)
    array, replacing whatever they had), or is removed when ``embeddings`` is None (nothing happens if they
    are not enrolled). ``sources``: one label per embedding, as in :meth:`Gallery.enroll`."""

    name: str
    embeddings: object = None
    sources: Optional[Sequence[Optional[str]]] = None


class Applied(NamedTuple):
    """What :meth:`Gallery.apply` did: people written (enrolled or replaced) and people removed."""

    written: int
    removed: int


class GalleryMeta(NamedTuple):
    """What a gallery file says about itself (see :meth:`Gallery.read_meta`)."""

    embedder_id: str
    dim: int
    schema_version: int


def _check_name(name: object, what: str = "name") -> str:
    """A name to look up (not to store): any non-empty string, so old unchecked names can still be removed."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidNameError(f"{what} must be a non-empty string, got {escape_name(repr(name))}")
    return name.strip()


def _explain(exc: sqlite3.Error) -> str:
    """What a SQLite error means for someone running edgeface."""
    text = str(exc)
    low = text.lower()
    if "readonly" in low or "read-only" in low:
        return f"{text} (the file or its folder is read-only for this user)"
    if "full" in low or "disk i/o" in low:
        return f"{text} (disk full or write error)"
    return text


def _is_corruption(exc: sqlite3.Error) -> bool:
    low = str(exc).lower()
    return "malformed" in low or "not a database" in low or "corrupt" in low


def _normalize(embeddings: object, dim: int, what: str, single: bool) -> np.ndarray:
    """Validate embeddings and return them L2-normalized as a (k, dim) float32 array."""
    try:
        arr = np.asarray(embeddings, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a numeric array: {exc}") from None
    expected = f"({dim},)" if single else f"(k, {dim}) or ({dim},)"
    if arr.ndim == 1 and arr.shape[0] == dim:
        arr = arr.reshape(1, dim)
    elif single or arr.ndim != 2 or arr.shape[1] != dim or arr.shape[0] == 0:
        raise ValueError(f"{what} has shape {arr.shape}, expected {expected}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{what} row {int(np.argmax(bad))} contains NaN or inf")
    norms = np.linalg.norm(arr, axis=1)
    if (norms < 1e-12).any():
        raise ValueError(f"{what} row {int(np.argmax(norms < 1e-12))} is a zero vector")
    return (arr / norms[:, None]).astype(np.float32)


def _connect(path: str) -> sqlite3.Connection:
    # autocommit + synchronous=FULL (see edgeface._sqlite); we issue BEGIN/COMMIT
    # ourselves (see _transaction), so schema creation is transactional too.
    conn = _sqlite.connect(path)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA secure_delete = ON")  # deleted embeddings are overwritten, not left in free pages
    return conn


def _check_path(path: str) -> None:
    """One clear line for a gallery path that is a folder or sits under a file."""
    if os.path.isdir(path):
        raise GalleryError(f"{path} is a directory, not a gallery file")
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise GalleryError(f"{path}: {parent} is a file, not a folder")


def check_gallery(path: PathLike) -> list[str]:
    """Problems with the gallery file at ``path`` (empty when it is sound): for ``doctor``.

    Runs SQLite's ``PRAGMA quick_check`` (every page and index readable and consistent) on a read-only
    connection, then reads every embedding. Nothing is written.
    """
    path = os.fspath(path)
    try:
        meta = Gallery.read_meta(path)
    except GalleryError as exc:
        return [str(exc)]
    conn = None
    try:
        conn = _sqlite.connect_readonly(path)
        problems = _sqlite.quick_check(conn)
        if not problems:
            for name, blob in conn.execute("SELECT p.name, e.vector FROM embeddings e "
                                           "JOIN people p ON p.id = e.person_id"):
                if len(blob) != 4 * meta.dim:
                    problems.append(f"embedding of '{escape_name(name)}' has {len(blob)} bytes, "
                                    f"expected {4 * meta.dim}")
    except sqlite3.Error as exc:
        problems = [str(exc)]
    finally:
        if conn is not None:
            conn.close()
    return problems


def _read_meta(conn: sqlite3.Connection, path: str) -> Optional[GalleryMeta]:
    """Meta of an edgeface gallery, ``None`` for an empty database, else GalleryError."""
    tables = _sqlite.table_names(conn)
    if not tables:
        return None
    if not {"meta", "people", "embeddings"} <= tables:
        raise GalleryError(f"{path} is not an edgeface gallery (tables: {sorted(tables)})")
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    try:
        result = GalleryMeta(meta["embedder_id"], int(meta["dim"]), int(meta["schema_version"]))
    except (KeyError, ValueError) as exc:
        raise GalleryError(f"{path} is not an edgeface gallery (bad meta: {exc})") from None
    if result.schema_version > SCHEMA_VERSION:
        raise GalleryError(f"{path} has gallery schema v{result.schema_version}; this edgeface "
                           f"understands up to v{SCHEMA_VERSION} - upgrade edgeface")
    return result


class Gallery:
    """A SQLite-backed gallery of enrolled people and their face embeddings.

    ``Gallery(path, embedder_id, dim)`` opens the database at ``path``
    (``":memory:"`` for a throwaway one) or creates it, recording which
    embedder will fill it; ``create=False`` refuses to create a missing file
    (what a command that only reads wants: a typo is an error, not a new empty
    gallery).  Reopening a file with a different ``embedder_id`` or ``dim``
    raises :class:`EmbedderMismatchError`.  To open a file without knowing its
    embedder, use :meth:`Gallery.open` or :meth:`read_meta`.

    A Gallery object belongs to the thread that created it (sqlite3's rule).
    Several processes may open the same file; writes made by others are
    picked up by the next :meth:`match`.  A read-only file can be matched
    against; writing to it is a :class:`GalleryError`.
    """

    def __init__(self, path: PathLike, embedder_id: str, dim: int, *, create: bool = True) -> None:
        self.path = os.fspath(path)
        self.embedder_id = _check_name(embedder_id, "embedder_id")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise OptionError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self._cache: Optional[tuple] = None  # (data_version, matrix, starts, names)
        self._checked = False  # quick_check runs before the first write
        #: True when this object created the gallery file
        self.created = False
        self._conn: Optional[sqlite3.Connection] = None
        if self.path != ":memory:":
            _check_path(self.path)
            if not os.path.exists(self.path):
                if not create:
                    raise GalleryError(f"{self.path}: no such gallery file (a gallery is created by enrolling "
                                       "someone into it: edgeface enroll)")
                try:
                    self.created = _sqlite.create_private(self.path)
                except OSError as exc:
                    raise GalleryError(f"cannot create gallery {self.path}: {exc.strerror or exc}") from exc
            else:
                _sqlite.tighten(self.path, logger)
        try:
            self._conn = _connect(self.path)
            meta = _read_meta(self._conn, self.path)
            if meta is None:  # a new (empty) file: create the schema, unless another process just did
                with self._transaction():
                    meta = _read_meta(self._conn, self.path)
                    if meta is None:
                        _sqlite.run_script(self._conn, _SCHEMA)
                        self._conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                            ("embedder_id", self.embedder_id), ("dim", str(dim)),
                            ("schema_version", str(SCHEMA_VERSION))])
                        self._checked = True
                        logger.info("created gallery %s for embedder %s (dim %d)",
                                    self.path, self.embedder_id, dim)
            if meta is not None and (meta.embedder_id, meta.dim) != (self.embedder_id, dim):
                raise EmbedderMismatchError(
                    f"{self.path} holds embeddings from embedder {meta.embedder_id!r} "
                    f"(dim {meta.dim}), but embedder {self.embedder_id!r} (dim {dim}) was "
                    "requested; embeddings from different models are not comparable - "
                    "use the original embedder or enroll into a new gallery")
            # only now that we know the file is ours (journal_mode is persistent)
            if self._conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                _sqlite.use_wal(self._conn)
        except sqlite3.Error as exc:
            self.close()
            raise self._error(exc, "open") from exc
        except GalleryError:
            self.close()
            raise

    # -- opening without knowing the embedder ------------------------------------
    @staticmethod
    def read_meta(path: PathLike) -> GalleryMeta:
        """Return the embedder id, dimension and schema version stored in a gallery file.

        Raises GalleryError (naming the path) if the file is missing or is not an
        edgeface gallery.  The stored data is not modified.
        """
        path = os.fspath(path)
        _check_path(path)
        if not os.path.isfile(path):
            raise GalleryError(f"{path}: no such gallery file (a gallery is created by enrolling someone into "
                               "it: edgeface enroll)")
        conn = None
        try:
            conn = _sqlite.connect_readonly(path)
            meta = _read_meta(conn, path)
        except sqlite3.Error as exc:
            raise GalleryError(f"{path} is not a readable edgeface gallery: {_explain(exc)}") from exc
        finally:
            if conn is not None:
                conn.close()
        if meta is None:
            raise GalleryError(f"{path} is not an edgeface gallery (empty database)")
        return meta

    @classmethod
    def open(cls, path: PathLike) -> "Gallery":
        """Open an existing gallery file with whatever embedder it was built for (never creates one)."""
        meta = cls.read_meta(path)
        return cls(path, meta.embedder_id, meta.dim, create=False)

    # -- plumbing -------------------------------------------------------------
    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise GalleryError(f"gallery {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception; drops the match cache either way."""
        conn = self._db
        try:
            with _sqlite.transaction(conn):
                yield conn
        finally:
            self._cache = None

    @contextlib.contextmanager
    def _writing(self, action: str) -> Iterator[sqlite3.Connection]:
        """A write transaction on a gallery known to be sound; SQLite errors become one-line GalleryErrors."""
        try:
            if not self._checked:
                problems = _sqlite.quick_check(self._db)
                if problems:
                    raise CorruptGalleryError(
                        f"gallery {self.path} is corrupt ({'; '.join(problems[:3])}); {action} refused - "
                        "restore a backup or enroll into a new gallery")
                self._checked = True
            with self._transaction() as conn:
                yield conn
        except sqlite3.Error as exc:
            raise self._error(exc, f"{action} in", "; nothing was changed", f"{action} refused") from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._db
        except sqlite3.Error as exc:
            raise self._error(exc, "read") from exc

    def _error(self, exc: sqlite3.Error, doing: str, tail: str = "",
               corrupt: str = "restore a backup or enroll into a new gallery") -> GalleryError:
        """The one-line error for a SQLite error while ``doing`` (open, read...): :class:`CorruptGalleryError`
        (``corrupt`` says what now) for a damaged file, else a GalleryError saying what SQLite's error means."""
        if _is_corruption(exc):
            return CorruptGalleryError(f"gallery {self.path} is corrupt ({exc}); {corrupt}")
        return GalleryError(f"cannot {doing} gallery {self.path}: {_explain(exc)}{tail}")

    def _person_id(self, conn: sqlite3.Connection, name: str) -> Optional[int]:
        row = conn.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def check(self) -> list[str]:
        """SQLite's ``quick_check`` of this gallery: an empty list when sound (see :func:`check_gallery`)."""
        return _sqlite.quick_check(self._db)

    # -- writing ------------------------------------------------------------
    def enroll(self, name: str, embeddings: object,
               sources: Optional[Sequence[Optional[str]]] = None) -> int:
        """Store one or more embeddings of ``name``; return how many that person now has.

        ``embeddings`` is a (k, dim) or (dim,) float array.  Each row is
        L2-normalized and stored as float32.  Enrolling an existing name adds to
        that person - several photos (angles, lighting, glasses) make matching
        more robust.  ``name`` must follow :func:`check_name`.  ``sources``
        optionally gives one label per embedding (e.g. the image file it came
        from); without it nothing but the embedding is stored.  Raises
        ValueError (:class:`InvalidNameError` for the name) for a bad name, a
        wrong shape, NaN/inf, or a zero vector; nothing is stored then.
        """
        name = check_name(name)
        vectors = _normalize(embeddings, self.dim, "embeddings", single=False)
        if sources is None:
            sources = [None] * len(vectors)
        elif isinstance(sources, str) or len(sources) != len(vectors):
            raise ValueError(f"sources must be a sequence of {len(vectors)} labels, "
                             f"got {sources!r}")
        with self._writing(f"enroll '{escape_name(name)}'") as conn:
            pid = self._person_id(conn, name)
            if pid is None:
                created = datetime.now(timezone.utc).isoformat(timespec="seconds")
                pid = conn.execute("INSERT INTO people (name, created) VALUES (?, ?)",
                                   (name, created)).lastrowid
            conn.executemany(
                "INSERT INTO embeddings (person_id, vector, source) VALUES (?, ?, ?)",
                [(pid, v.astype("<f4").tobytes(), None if s is None else str(s))
                 for v, s in zip(vectors, sources)])
            (count,) = conn.execute("SELECT COUNT(*) FROM embeddings WHERE person_id = ?",
                                    (pid,)).fetchone()
        logger.info("enrolled %d embedding(s) of '%s' in %s", len(vectors), escape_name(name), self.path)
        return int(count)

    def apply(self, changes: Sequence[Change], also: Optional[Callable[[sqlite3.Connection], None]] = None) -> Applied:
        """Write a batch of :class:`Change` s in one transaction (one commit, one fsync), in order, all or
        nothing: what a site door does with a burst of person records from its hub.

        Every change is checked before anything is written (a new name must follow :func:`check_name`,
        embeddings as in :meth:`enroll`); one bad change raises ValueError (:class:`InvalidNameError` for a
        name) naming its position and nothing is stored. A write replaces the person's embeddings (their
        ``created`` time is renewed); a rename is a removal of the old name followed by a write of the new.
        Enrolling people one :meth:`enroll` at a time costs one commit each: for thousands of people, use this.

        ``also``: a function ``also(conn)`` run inside the same transaction after the changes, for a caller's own
        table in the gallery file (the site sync records which versions it applied), so both commit together.
        """
        rows = []
        for i, change in enumerate(changes):
            change = Change(*change)
            if change.embeddings is None:
                rows.append((_check_name(change.name), None, None))
                continue
            try:
                name = check_name(change.name)
                vectors = _normalize(change.embeddings, self.dim, f"change {i} embeddings", single=False)
            except InvalidNameError as exc:
                raise InvalidNameError(f"change {i}: {exc}; nothing was written") from None
            except ValueError as exc:
                raise ValueError(f"{exc}; nothing was written") from None
            sources = change.sources
            if sources is None:
                sources = [None] * len(vectors)
            elif isinstance(sources, str) or len(sources) != len(vectors):
                raise ValueError(f"change {i}: sources must be a sequence of {len(vectors)} labels; "
                                 "nothing was written")
            rows.append((name, vectors, [None if s is None else str(s) for s in sources]))
        if not rows and also is None:
            return Applied(0, 0)
        written = removed = 0
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._writing(f"apply {len(rows)} change(s)") as conn:
            for name, vectors, sources in rows:
                gone = conn.execute("DELETE FROM people WHERE name = ?", (name,)).rowcount
                if vectors is None:
                    removed += gone
                    continue
                pid = conn.execute("INSERT INTO people (name, created) VALUES (?, ?)", (name, created)).lastrowid
                conn.executemany("INSERT INTO embeddings (person_id, vector, source) VALUES (?, ?, ?)",
                                 [(pid, v.astype("<f4").tobytes(), s) for v, s in zip(vectors, sources)])
                written += 1
            if also is not None:
                also(conn)
        logger.info("applied %d change(s) to %s: %d written, %d removed", len(rows), self.path, written, removed)
        return Applied(written, removed)

    def rename(self, old: str, new: str) -> None:
        """Rename a person, keeping their embeddings.

        ``new`` must follow :func:`check_name` (``old`` may be any stored name).
        Raises UnknownPersonError if ``old`` is missing, PersonExistsError if
        ``new`` is already taken.
        """
        old, new = _check_name(old, "old name"), check_name(new)
        with self._writing(f"rename '{escape_name(old)}'") as conn:
            if self._person_id(conn, old) is None:
                raise UnknownPersonError(f"'{escape_name(old)}' is not enrolled in {self.path}")
            if old != new and self._person_id(conn, new) is not None:
                raise PersonExistsError(f"'{escape_name(new)}' is already enrolled in {self.path}")
            conn.execute("UPDATE people SET name = ? WHERE name = ?", (new, old))

    def remove(self, name: str, *more: str) -> list[Forgotten]:
        """Delete one or more people and all their embeddings, all or nothing.

        If any name is not enrolled, :class:`UnknownPersonError` names every
        missing one and nobody is removed.  Returns what was removed per person.
        """
        return self._delete((name, *more), "remove")

    def forget(self, name: str, *more: str) -> list[Forgotten]:
        """Erase one or more people from the gallery, all or nothing, and say what was erased.

        Like :meth:`remove`, then the write-ahead log is checkpointed and
        truncated, so the embeddings are gone from every file of the gallery
        (deleted rows are overwritten in place: ``secure_delete``).  Whoever
        also keeps events or snapshots of the person (the device) erases those.
        """
        removed = self._delete((name, *more), "forget")
        try:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            raise GalleryError(f"forgot {len(removed)} people in {self.path}, but could not truncate its "
                               f"write-ahead log: {_explain(exc)}") from exc
        if busy:
            logger.warning("%s: another process is reading the gallery; its write-ahead log is truncated "
                           "when that process closes it", self.path)
        return removed

    def _delete(self, names: Sequence[str], action: str) -> list[Forgotten]:
        wanted = list(dict.fromkeys(_check_name(n) for n in names))
        with self._writing(action) as conn:
            ids = {n: self._person_id(conn, n) for n in wanted}
            missing = [n for n, pid in ids.items() if pid is None]
            if missing:
                raise UnknownPersonError(
                    ", ".join(f"'{escape_name(n)}'" for n in missing)
                    + f" {'is' if len(missing) == 1 else 'are'} not enrolled in {self.path}; nobody was removed")
            out = []
            for n, pid in ids.items():
                sources = [r[0] for r in conn.execute(
                    "SELECT source FROM embeddings WHERE person_id = ? AND source IS NOT NULL ORDER BY id", (pid,))]
                (count,) = conn.execute("SELECT COUNT(*) FROM embeddings WHERE person_id = ?", (pid,)).fetchone()
                conn.execute("DELETE FROM people WHERE id = ?", (pid,))
                out.append(Forgotten(n, int(count), sources))
        return out

    # -- reading ------------------------------------------------------------
    def people(self) -> list[Person]:
        """All enrolled people, sorted by name."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT p.name, COUNT(e.id), p.created FROM people p "
                "LEFT JOIN embeddings e ON e.person_id = p.id GROUP BY p.id ORDER BY p.name").fetchall()
        return [Person(*row) for row in rows]

    def __len__(self) -> int:
        with self._reading() as db:
            return db.execute("SELECT COUNT(*) FROM people").fetchone()[0]

    def __contains__(self, name: object) -> bool:
        with self._reading() as db:
            return isinstance(name, str) and self._person_id(db, name.strip()) is not None

    def _matrix(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(N, dim) float32 matrix of all embeddings grouped by person, group starts, names.

        Rebuilt lazily after our own writes (which drop the cache) or when
        ``PRAGMA data_version`` says another connection committed.
        """
        with self._reading() as db:
            version = db.execute("PRAGMA data_version").fetchone()[0]
            if self._cache is None or self._cache[0] != version:
                rows = db.execute(
                    "SELECT p.name, e.vector FROM embeddings e JOIN people p ON p.id = e.person_id "
                    "ORDER BY p.id, e.id").fetchall()
            else:
                rows = None
        if rows is not None:
            matrix = np.empty((len(rows), self.dim), dtype=np.float32)
            names: list[str] = []
            starts: list[int] = []
            for i, (name, blob) in enumerate(rows):
                if len(blob) != 4 * self.dim:
                    raise CorruptGalleryError(f"{self.path}: corrupt embedding of '{escape_name(name)}' "
                                              f"({len(blob)} bytes, expected {4 * self.dim})")
                matrix[i] = np.frombuffer(blob, dtype="<f4")
                if not names or names[-1] != name:
                    names.append(name)
                    starts.append(i)
            self._cache = (version, matrix, np.asarray(starts, dtype=np.intp), names)
        return self._cache[1], self._cache[2], self._cache[3]

    def match(self, embedding: object, k: int = 1) -> list[Match]:
        """The ``k`` most similar people, best first (fewer if fewer are enrolled).

        A person's score is the *maximum* cosine similarity between
        ``embedding`` (shape (dim,)) and any of their stored embeddings, so one
        good enrollment photo is enough to be found.  No threshold is applied:
        the top result is returned even for a stranger - use :meth:`identify`
        to decide "known or unknown".
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise OptionError(f"k must be a positive int, got {k!r}")
        query = _normalize(embedding, self.dim, "embedding", single=True)[0]
        matrix, starts, names = self._matrix()
        if not names:
            return []
        scores = np.maximum.reduceat(matrix @ query, starts)
        order = np.argsort(-scores, kind="stable")[:k]
        return [Match(names[i], float(np.clip(scores[i], -1.0, 1.0))) for i in order]

    def identify(self, embedding: object, min_cosine_similarity: float) -> Match:
        """Name the person in ``embedding``, or return ``Match(None, best_similarity)``.

        ``min_cosine_similarity`` is the smallest cosine similarity accepted
        as a positive identification.  Raising it gives fewer false accepts
        (strangers taken for someone enrolled) and more false rejects
        (enrolled people reported as unknown); lowering it does the opposite.
        The right value depends on the embedding model: each model's manifest
        carries a default calibrated on LFW.  The gallery deliberately does not
        invent one.  Must be in [-1, 1].  With an empty gallery the result is
        ``Match(None, nan)``.
        """
        check_threshold(min_cosine_similarity)  # before the lookup: a bad threshold fails on any gallery
        return best_match(self.match(embedding, k=1), min_cosine_similarity)

    # -- lifetime -----------------------------------------------------------
    def close(self) -> None:
        """Close the database.  Safe to call twice."""
        conn, self._conn = getattr(self, "_conn", None), None
        self._cache = None
        if conn is not None:
            conn.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"Gallery({self.path!r}, embedder_id={self.embedder_id!r}, dim={self.dim}, {state})"
