"""GIN's counter-based draw: every number of a network is a function of (seed, counter), so a GPU kernel draws the
same network on the device, with no host work per layer or sample, as the host does here in NumPy.

The generator is Triton's ``tl.randn``/``tl.rand`` (Philox4x32-10, 32-bit counter ``c0``, ``c1 = c2 = c3 = 0``) with the
key ``(seed mod 2^31, seed >> 31)``: :func:`philox` below is its integer arithmetic, so the integers are the same bits
everywhere; the floats go through ``log``, ``cos`` and ``sqrt``, whose rounding differs between NumPy and a GPU's
libdevice by an ulp or two.

A draw of ``seed`` (``docs/gin.md``, "The seeded draw"), counters:

- the kernel sizes, from the seed's SplitMix64 hash ``h`` (integers only: the same choice on every backend): layer
  ``l`` takes ``pool[(w * len(pool)) >> 16]``, ``w`` bits ``16 (l mod 4)`` up of ``h`` (of ``h``'s own hash from the
  fifth layer on);
- from :data:`FIRST`, one block of :func:`block_floats` numbers a sample: per layer the ``COUT x CIN x KM^d``
  normal weights (``KM``: the pool's largest size, or the layer's fixed size; a smaller drawn kernel takes the centre
  of that cube) and the ``COUT`` normal biases, then the sample's uniform alpha. A network shared by the batch is
  sample 0's block.
- View ``v`` of a call (its ``v``-th independent network for the same batch) draws with the seed ``seed + v * 2^31``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SEED_BITS = 62  # seeds are 0 .. 2^62 - 1: two 31-bit halves, each a non-negative int32 kernel argument
VIEW_STRIDE = 1 << 31  # view v of a call draws with seed + v * VIEW_STRIDE
FIRST = 16  # the first counter of sample 0's block
_M32 = np.uint64(0xFFFFFFFF)
_KEY_A, _KEY_B = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_ROUND_A, _ROUND_B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)


def keys(seed: int) -> tuple[int, int]:
    """Philox key words of ``seed``: its low 31 bits and the rest (mod 2^32)."""
    return seed & 0x7FFFFFFF, (seed >> 31) & 0xFFFFFFFF


def philox(seed: int, counters: np.ndarray, rounds: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The first two output words of Philox4x32 at ``counters`` (uint32) for ``seed``, as Triton computes them."""
    k0, k1 = (np.uint64(k) for k in keys(seed))
    c0 = counters.astype(np.uint64)
    c1 = np.zeros_like(c0)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    for _ in range(rounds):
        pb, pa = _ROUND_B * c2, _ROUND_A * c0
        c0, c2 = (pb >> np.uint64(32)) ^ c1 ^ k0, (pa >> np.uint64(32)) ^ c3 ^ k1
        c1, c3 = pb & _M32, pa & _M32
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return c0.astype(np.uint32), c1.astype(np.uint32)


def uniform(bits: np.ndarray) -> np.ndarray:
    """Triton's ``uint_to_uniform_float`` of 32-bit words: float32 in [0, 1)."""
    x = bits.view(np.int32).astype(np.int64)
    x = np.where(x < 0, -x - 1, x)
    return x.astype(np.float32) * np.float32(4.6566127342e-10)


def normal(b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """Triton's Box-Muller (``pair_uniform_to_normal``, its first output) of two words each: float32 N(0, 1)."""
    u1 = np.maximum(np.float32(1.0e-7), uniform(b0))
    th = np.float32(6.283185307179586) * uniform(b1)
    r = np.sqrt(np.float32(-2.0) * np.log(u1))
    return r * np.cos(th)


def splitmix64(z: int) -> int:
    """SplitMix64's finalizer of ``z`` (mod 2^64): the hash the kernel sizes are drawn from."""
    z = (z + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def kernel_sizes(seed: int, pool: Sequence[int], n_layers: int) -> tuple[int, ...]:
    """Each layer's kernel size, drawn from ``pool`` by the seed's hash (module docstring; ~2 µs)."""
    h = splitmix64(seed)
    n = len(pool)
    sizes = []
    for layer in range(n_layers):
        if layer and layer % 4 == 0:
            h = splitmix64(h)
        sizes.append(pool[(((h >> (16 * (layer % 4))) & 0xFFFF) * n) >> 16])
    return tuple(sizes)


def block_floats(layers: Sequence[tuple[int, int]], max_sizes: Sequence[int], spatial_dims: int) -> int:
    """Numbers a sample's block holds: every layer's ``COUT x CIN x KM^d`` weights and ``COUT`` biases, and alpha."""
    return sum(cout * cin * km**spatial_dims + cout for (cin, cout), km in zip(layers, max_sizes, strict=True)) + 1


def sample_block(seed: int, samples: np.ndarray, layers: Sequence[tuple[int, int]], max_sizes: Sequence[int],
                 spatial_dims: int) -> np.ndarray:
    """The blocks of ``samples`` [n] (float32 [n, :func:`block_floats`]): normal weights and biases, uniform alpha."""
    n = block_floats(layers, max_sizes, spatial_dims)
    counters = (FIRST + samples.astype(np.int64)[:, None] * n + np.arange(n)).astype(np.uint32)
    b0, b1 = philox(seed, counters)
    out = normal(b0, b1)
    out[:, -1] = uniform(b0[:, -1])
    return out


def alphas(seed: int, samples: np.ndarray, layers: Sequence[tuple[int, int]], max_sizes: Sequence[int],
           spatial_dims: int) -> np.ndarray:
    """The uniform alphas of ``samples`` alone (the last number of each block)."""
    n = block_floats(layers, max_sizes, spatial_dims)
    return uniform(philox(seed, (FIRST + samples.astype(np.int64) * n + n - 1).astype(np.uint32))[0])


def check_counters(batch: int, layers: Sequence[tuple[int, int]], max_sizes: Sequence[int], spatial_dims: int) -> None:
    """Refuse a batch whose counters would pass 2^31 (the kernel computes them in int32)."""
    if FIRST + batch * block_floats(layers, max_sizes, spatial_dims) >= 2**31:
        raise ValueError(f"a seeded GIN draw numbers its values in int32: a batch of {batch} is too large for this "
                         "network; split the batch")
