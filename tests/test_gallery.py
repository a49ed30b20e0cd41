"""Tests for edgeface.gallery (synthetic embeddings; no models needed)."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edgeface.gallery import (
    Applied,
    Change,
    EmbedderMismatchError,
    Gallery,
    GalleryError,
    InvalidNameError,
    Match,
    PersonExistsError,
    UnknownPersonError,
)

DIM = 16


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def basis(i, dim=DIM):
    v = np.zeros(dim)
    v[i] = 1.0
    return v


@pytest.fixture
def g():
    with Gallery(":memory:", "test-embedder", DIM) as gallery:
        yield gallery


def test_enroll_and_match_topk_ordering(g):
    assert g.enroll("a", basis(0)) == 1
    g.enroll("b", basis(1))
    g.enroll("c", basis(2))
    query = unit(3 * basis(0) + 2 * basis(1) + 1 * basis(2))
    result = g.match(query, k=3)
    assert [m.name for m in result] == ["a", "b", "c"]
    assert result[0].similarity == pytest.approx(3 / np.sqrt(14), abs=1e-6)
    assert result[2].similarity == pytest.approx(1 / np.sqrt(14), abs=1e-6)
    assert [m.name for m in g.match(query, k=2)] == ["a", "b"]
    assert len(g.match(query, k=10)) == 3          # k larger than gallery
    assert len(g) == 3 and "b" in g and "z" not in g


def test_embeddings_are_normalized_and_person_score_is_max(g):
    # 'a' has one embedding that is a long vector along axis 0 (normalization
    # must not let its length matter) and one along axis 5.
    assert g.enroll("a", np.stack([10 * basis(0), basis(5)])) == 2
    g.enroll("b", unit(basis(0) + basis(1)))
    top = g.match(basis(5), k=2)
    assert top[0] == Match("a", pytest.approx(1.0, abs=1e-6))
    assert top[1].name == "b" and top[1].similarity == pytest.approx(0.0, abs=1e-6)
    top = g.match(basis(0), k=2)
    assert top[0].name == "a" and top[0].similarity == pytest.approx(1.0, abs=1e-6)
    assert top[1].similarity == pytest.approx(1 / np.sqrt(2), abs=1e-6)
    # enrolling more adds to the same person
    assert g.enroll("a", basis(7), sources=["img7.jpg"]) == 3
    assert [(p.name, p.num_embeddings) for p in g.people()] == [("a", 3), ("b", 1)]


def test_identify_threshold(g):
    g.enroll("a", basis(0))
    probe = unit(basis(0) + basis(1))                # cosine 0.707 to 'a'
    assert g.identify(probe, min_cosine_similarity=0.7).name == "a"
    unknown = g.identify(probe, min_cosine_similarity=0.8)
    assert unknown.name is None
    assert unknown.similarity == pytest.approx(1 / np.sqrt(2), abs=1e-6)
    for bad in (1.5, -2, float("nan"), "0.5", None):
        with pytest.raises(ValueError):
            g.identify(probe, min_cosine_similarity=bad)


def test_empty_gallery(g):
    assert g.match(basis(0), k=3) == []
    m = g.identify(basis(0), min_cosine_similarity=0.5)
    assert m.name is None and np.isnan(m.similarity)
    assert len(g) == 0 and g.people() == []


def test_rename_and_remove(g):
    g.enroll("a", basis(0))
    g.enroll("b", basis(1))
    g.rename("a", "alice")
    assert "a" not in g and "alice" in g
    assert g.match(basis(0))[0].name == "alice"    # cache invalidated by rename
    with pytest.raises(UnknownPersonError):
        g.rename("a", "x")
    with pytest.raises(PersonExistsError):
        g.rename("alice", "b")
    assert {p.name for p in g.people()} == {"alice", "b"}
    g.remove("b")
    assert "b" not in g and len(g) == 1
    assert [m.name for m in g.match(basis(1), k=5)] == ["alice"]
    with pytest.raises(UnknownPersonError) as err:
        g.remove("b")
    assert isinstance(err.value, KeyError) and "'b' is not enrolled" in str(err.value)


def test_apply_writes_a_batch_in_one_transaction_all_or_nothing(tmp_path):
    path = tmp_path / "g.db"
    with Gallery(path, "test-embedder", DIM) as g:
        g.enroll("old", basis(5))
        g.enroll("kept", basis(6))
        done = g.apply([Change("a", basis(0), ["site:a"]), Change("b", np.stack([basis(1), basis(2)])),
                        Change("old", None), Change("amy", basis(3)),  # a rename: old name out, new name in
                        Change("nobody", None),                      # removing a missing name: nothing
                        ("a", basis(4))])                            # a later write replaces the earlier one
        assert done == Applied(written=4, removed=1)
        assert {p.name: p.num_embeddings for p in g.people()} == {"a": 1, "b": 2, "amy": 1, "kept": 1}
        assert g.match(basis(4))[0] == Match("a", 1.0) and g.match(basis(0))[0].name != "a"
        before = {p.name for p in g.people()}
        for bad, err, fragment in [(Change("c\nd", basis(0)), InvalidNameError, "change 1"),
                                   (Change("c", np.zeros(DIM)), ValueError, "zero vector"),
                                   (Change("c", basis(0), ["x", "y"]), ValueError, "sources")]:
            with pytest.raises(err, match=fragment):
                g.apply([Change("kept", None), bad])
            assert {p.name for p in g.people()} == before  # nothing written, not even the valid first change
        assert g.apply([]) == Applied(0, 0)

        def bookkeeping(conn):  # a caller's own table in the gallery file, committed with the changes
            conn.execute("CREATE TABLE IF NOT EXISTS mine (v INTEGER)")
            conn.execute("INSERT INTO mine VALUES (7)")

        def failing(conn):
            bookkeeping(conn)
            raise sqlite3.OperationalError("disk I/O error")

        with pytest.raises(GalleryError, match="disk full or write error"):
            g.apply([Change("c", basis(7))], also=failing)
        assert "c" not in g
        assert g.apply([Change("c", basis(7))], also=bookkeeping) == Applied(1, 0)
    with Gallery(path, "test-embedder", DIM) as again:  # committed to the file
        assert {p.name for p in again.people()} == {"a", "b", "amy", "kept", "c"}
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT v FROM mine").fetchall() == [(7,)]  # the failing call left nothing
    finally:
        conn.close()


@pytest.mark.parametrize("bad, fragment", [
    (np.full(DIM, np.nan), "NaN"),
    (np.array([basis(0), np.r_[np.inf, np.zeros(DIM - 1)]]), "row 1"),
    (np.zeros(DIM + 1), "shape"),
    (np.zeros((2, DIM - 1)), "shape"),
    (np.zeros((0, DIM)), "shape"),
    (np.zeros(DIM), "zero vector"),
    ("not numbers", "numeric"),
])
def test_enroll_rejects_bad_embeddings(g, bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        g.enroll("a", bad)
    assert len(g) == 0                             # nothing half-stored


@pytest.mark.parametrize("name", ["", "   ", None, 3])
def test_enroll_rejects_bad_names(g, name):
    with pytest.raises(ValueError, match="name"):
        g.enroll(name, basis(0))


def test_match_rejects_bad_query(g):
    g.enroll("a", basis(0))
    with pytest.raises(ValueError, match="shape"):
        g.match(np.ones(DIM - 1))
    with pytest.raises(ValueError, match="NaN"):
        g.match(np.full(DIM, np.nan))
    with pytest.raises(ValueError, match="k must be"):
        g.match(basis(0), k=0)


def test_persistence_and_embedder_mismatch(tmp_path):
    path = tmp_path / "people.db"
    with Gallery(path, "facenet-v1", DIM) as g:
        g.enroll("a", np.stack([basis(0), basis(1)]))
        g.enroll("b", basis(2))
    with Gallery(path, "facenet-v1", DIM) as g:
        assert [(p.name, p.num_embeddings) for p in g.people()] == [("a", 2), ("b", 1)]
        assert g.match(basis(1))[0] == Match("a", pytest.approx(1.0, abs=1e-6))
    with pytest.raises(EmbedderMismatchError) as err:
        Gallery(path, "arcface-v2", DIM)
    msg = str(err.value)
    assert str(path) in msg and "facenet-v1" in msg and "arcface-v2" in msg
    with pytest.raises(EmbedderMismatchError):
        Gallery(path, "facenet-v1", DIM * 2)
    meta = Gallery.read_meta(path)
    assert (meta.embedder_id, meta.dim) == ("facenet-v1", DIM)
    with Gallery.open(path) as g:
        assert g.embedder_id == "facenet-v1" and len(g) == 2


def test_read_meta_rejects_non_galleries(tmp_path):
    with pytest.raises(GalleryError, match="no such"):
        Gallery.read_meta(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(GalleryError, match=str(junk)):
        Gallery.read_meta(junk)
    with pytest.raises(GalleryError, match=str(junk)):
        Gallery(junk, "x", DIM)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER)")
    conn.close()
    with pytest.raises(GalleryError, match="not an edgeface gallery"):
        Gallery.read_meta(other)
    with pytest.raises(GalleryError, match="not an edgeface gallery"):
        Gallery(other, "x", DIM)
    with sqlite3.connect(other) as conn:            # someone else's DB is left alone
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_closed_gallery_raises(g):
    g.close()
    g.close()
    with pytest.raises(GalleryError, match="closed"):
        len(g)


def test_sees_writes_from_another_connection(tmp_path):
    path = tmp_path / "shared.db"
    with Gallery(path, "e", DIM) as reader, Gallery(path, "e", DIM) as writer:
        writer.enroll("a", basis(0))
        assert reader.match(basis(0))[0].name == "a"   # builds the cache
        writer.enroll("b", basis(1))
        assert reader.match(basis(1))[0].name == "b"   # cache refreshed via data_version


PER_PERSON = 100
CHILD = textwrap.dedent("""
    import sys, numpy as np
    from edgeface.gallery import Gallery
    g = Gallery(sys.argv[1], "crash-test", {dim})
    i = len(g)                                  # resume after earlier rounds
    while True:
        vectors = np.random.default_rng(i).normal(size=({per}, {dim})) + 0.1
        g.enroll(f"p{{i}}", vectors, sources=[f"s{{j}}" for j in range({per})])
        print(f"p{{i}}", flush=True)
        i += 1
""").format(dim=DIM, per=PER_PERSON)


def enroll_until_killed(path, wait_for):
    """Run CHILD, SIGKILL it after it reported `wait_for` enrollments; return all it reported."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    errors = Path(str(path) + ".stderr")
    with open(errors, "w") as err:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], env=env,
                                 stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        reported = [child.stdout.readline().strip() for _ in range(wait_for)]
        time.sleep(0.02)                     # let it get into later enrollments
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        # read through the same buffered stream (communicate() would skip its buffer)
        reported += child.stdout.read().split()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL, errors.read_text()
    return [name for name in reported if name]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_mid_enrollment_leaves_no_partial_person(tmp_path):
    path = tmp_path / "crash.db"
    acknowledged = []
    for _ in range(4):                       # several kills: more chances to hit a transaction
        acknowledged += enroll_until_killed(path, wait_for=10)
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        with Gallery(path, "crash-test", DIM) as g:
            people = {p.name: p.num_embeddings for p in g.people()}
        # every enrollment the child reported as done survived the kill ...
        assert set(acknowledged) <= set(people)
        # ... plus at most one committed but not yet reported, and none is partial
        assert len(people) - len(acknowledged) in (0, 1)
        partial = {n: c for n, c in people.items() if c != PER_PERSON}
        assert not partial, f"partially enrolled people: {partial}"
        acknowledged = sorted(people, key=lambda n: int(n[1:]))
    assert acknowledged[:3] == ["p0", "p1", "p2"] and len(acknowledged) >= 40

    # and the stored vectors are exactly the ones the child enrolled
    last = acknowledged[-1]
    expected = np.random.default_rng(int(last[1:])).normal(size=(PER_PERSON, DIM)) + 0.1
    with Gallery(path, "crash-test", DIM) as g:
        for vec in expected[:5]:
            assert g.match(vec)[0] == Match(last, pytest.approx(1.0, abs=1e-5))
