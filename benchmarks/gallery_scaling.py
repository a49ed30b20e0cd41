"""Gallery scaling: match latency and memory for 1k / 10k / 100k enrolled embeddings, float32 vs compact stores.

LFW has 13k photos, so a 100k gallery cannot be all real faces. Real embeddings of ``real_images`` LFW photos
(the int8 pipeline) fit a Gaussian model of the embedding space (mean and covariance); gallery vectors are
drawn from it and L2-normalized, and probes are real embeddings of other LFW photos, so score distributions
(and hence near-ties, which decide top-1 agreement) look like real ones.

Stores (5 embeddings per person, a person's score is the best of theirs, as :meth:`edgeface.Gallery.match`):

* ``float32``: the matrix as :class:`edgeface.Gallery` keeps it; one BLAS matrix-vector product;
* ``float16``: half the memory; scored in blocks converted to float32 (numpy has no fast float16 GEMV);
* ``int8``: a quarter of the memory plus one float scale per row (symmetric per-row quantization); scored in
  blocks converted to float32, multiplied by the row scales.

Reported: median / p95 match time per probe, store bytes, top-1 agreement with float32 and the largest score
difference.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import common

log = logging.getLogger(__name__)
PER_PERSON = 5
BLOCK = 8192


class Store:
    def __init__(self, kind: str, matrix: np.ndarray):
        self.kind = kind
        self.starts = np.arange(0, len(matrix), PER_PERSON)
        if kind == "float32":
            self.m = np.ascontiguousarray(matrix, np.float32)
            self.scale = None
        elif kind == "float16":
            self.m = matrix.astype(np.float16)
            self.scale = None
        elif kind == "int8":
            s = np.abs(matrix).max(axis=1) / 127.0
            self.m = np.round(matrix / s[:, None]).astype(np.int8)
            self.scale = s.astype(np.float32)
        else:
            raise ValueError(f"unknown store {kind!r}; use float32, float16 or int8")

    @property
    def nbytes(self) -> int:
        return int(self.m.nbytes + (self.scale.nbytes if self.scale is not None else 0))

    def scores(self, q: np.ndarray) -> np.ndarray:
        if self.kind == "float32":
            sims = self.m @ q
        else:
            sims = np.empty(len(self.m), np.float32)
            for s in range(0, len(self.m), BLOCK):
                sims[s:s + BLOCK] = self.m[s:s + BLOCK].astype(np.float32) @ q
            if self.scale is not None:
                sims *= self.scale
        return np.maximum.reduceat(sims, self.starts)

    def top1(self, q: np.ndarray) -> tuple[int, float]:
        s = self.scores(q)
        i = int(np.argmax(s))
        return i, float(s[i])


def real_embeddings(models: Path, lfw: Path, count: int, show_progress: bool) -> np.ndarray:
    variants, _ = common.model_variants(models, ["int8"])
    if not variants:
        raise common.BenchmarkError(f"no int8 models in {models}")
    files = sorted((Path(lfw) / "images_deepfunneled").glob("*/*.jpg"))
    if not files:
        raise common.BenchmarkError(f"no LFW images in {lfw}")
    files = files[:: max(1, len(files) // count)][:count]
    emb = common.embed_paths(variants[0].recognizer(), files, desc="real embeddings", show_progress=show_progress)
    return np.stack([e for e in emb.values() if e is not None])


def run(models: Path, lfw: Path, settings: dict, seed: int = 0, show_progress: bool = True) -> dict:
    real = real_embeddings(models, lfw, int(settings["real_images"]), show_progress)
    half = len(real) // 2
    fit, probes = real[:half], real[half:][: int(settings["probes"])]
    mean = fit.mean(axis=0)
    cov = np.cov(fit, rowvar=False) + 1e-6 * np.eye(fit.shape[1])
    rng = np.random.default_rng(seed)
    rows = []
    for n in settings["sizes"]:
        g = rng.multivariate_normal(mean, cov, size=n, method="cholesky").astype(np.float32)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        stores = {k: Store(k, g) for k in settings.get("stores", ["float32", "float16", "int8"])}
        ref = [stores["float32"].top1(q) for q in probes] if "float32" in stores else None
        times = {k: [] for k in stores}
        for _ in range(int(settings["repeats"])):
            for q in probes:
                for k in rng.permutation(list(stores)):  # interleaved
                    t0 = time.perf_counter()
                    stores[k].top1(q)
                    times[k].append(time.perf_counter() - t0)
        for k, st in stores.items():
            res = [st.top1(q) for q in probes]
            agree = float(np.mean([a[0] == b[0] for a, b in zip(res, ref)])) if ref else None
            diff = float(np.max([abs(a[1] - b[1]) for a, b in zip(res, ref)])) if ref else None
            rows.append({"embeddings": n, "people": len(st.starts), "store": k, "bytes": st.nbytes,
                         "mb": round(st.nbytes / 2 ** 20, 2), "match_ms": common.stats_ms(times[k]),
                         "top1_agreement_with_float32": agree, "max_score_diff": diff})
        del stores, g
    return {"benchmark": "gallery", "machine": common.machine_info(), "settings": settings,
            "dim": int(real.shape[1]), "real_embeddings": int(len(real)), "rows": rows}


def markdown(result: dict) -> str:
    lines = [common.header("Gallery scaling", result["machine"],
                           f"{result['dim']}-d embeddings, {PER_PERSON} per person; "
                           "gallery drawn from a Gaussian fitted "
                           f"to {result['real_embeddings'] // 2} real LFW embeddings, probes are other real ones.")]
    lines.append(common.md_table(
        ["embeddings", "store", "MB", "match median ms", "p95", "min", "top-1 = float32", "max abs score diff"],
        [[r["embeddings"], r["store"], r["mb"], r["match_ms"]["median"], r["match_ms"]["p95"], r["match_ms"]["min"],
          r["top1_agreement_with_float32"], r["max_score_diff"]] for r in result["rows"]]))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    plt = common.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    for store in dict.fromkeys(r["store"] for r in result["rows"]):
        rs = [r for r in result["rows"] if r["store"] == store]
        x = [r["embeddings"] for r in rs]
        a.loglog(x, [r["match_ms"]["median"] for r in rs], "o-", label=store)
        b.loglog(x, [r["mb"] for r in rs], "o-", label=store)
    a.set_xlabel("enrolled embeddings")
    a.set_ylabel("median match ms")
    b.set_xlabel("enrolled embeddings")
    b.set_ylabel("store MB")
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
