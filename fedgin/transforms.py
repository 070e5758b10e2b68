"""GIN as MONAI transforms, for one channel-first image (``RandGIN``) or a dictionary of them (``RandGINd``).

These run in a data pipeline, image by image. Inside a training step, on a batch already on the GPU, use
the module :class:`fedgin.GIN` (``RandGIN.as_module`` builds one with the same options).
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import MAX_SEED, TransformBackends, convert_to_dst_type, convert_to_tensor

from fedgin.gin import BACKENDS, GIN, gin, make_config

_FROM_IMAGE = ("in_channels", "out_channels", "spatial_dims")


class RandGIN(RandomizableTransform):
    """With probability ``prob``, GIN of one channel-first image [C, H, W] or [C, D, H, W] with a fresh network.

    ``config`` takes :class:`fedgin.GINConfig`'s fields except the channels and ``spatial_dims``, which
    come from the image. ``replicate_to`` replicates a 1-channel image to that many channels first (the
    original GIN runs on grayscale copied to 3 channels; an image that has them already passes as it is);
    the output has that many channels whether GIN was applied or not. The network is drawn from a seed
    taken from ``self.R`` (the seeded draw, :func:`fedgin.gin`'s ``seed``), so ``set_random_state`` makes the
    transform deterministic, and the same seed gives the same network on any device or backend. On a GPU the call
    does not wait for the device: non-finite input is reported by :func:`fedgin.check_errors`.
    The output has the input's type (numpy array, tensor or MetaTensor with its metadata) and dtype.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, prob: float = 0.1, replicate_to: int | None = None, backend: str = "auto", **config: Any):
        RandomizableTransform.__init__(self, prob)
        given = sorted(set(_FROM_IMAGE) & set(config))
        if given:
            raise ValueError(f"RandGIN takes {given} from the image; do not pass them")
        if backend not in BACKENDS:
            raise ValueError(f"unknown GIN backend {backend!r}; choose one of {BACKENDS}")
        if replicate_to is not None and int(replicate_to) < 1:
            raise ValueError(f"RandGIN replicate_to must be >= 1, got {replicate_to}")
        make_config(in_channels=replicate_to or 1, **config)  # fail now on a bad option, not at the first image
        self.config = dict(config)
        self.replicate_to = replicate_to
        self.gin_backend = backend
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._seed = int(self.R.randint(MAX_SEED))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return self.replicate(img)
        x = self._channels(img, tensor=True)
        out = gin(x[None], backend=self.gin_backend, seed=self._seed, check_finite=False, **self.config)
        return convert_to_dst_type(out[0], dst=img)[0]

    def replicate(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """``img`` with ``replicate_to`` channels (itself when there is nothing to replicate), of ``img``'s type."""
        x = self._channels(img, tensor=False)
        return img if x is img else convert_to_dst_type(x, dst=img)[0]

    def as_module(self, spatial_dims: int = 2, in_channels: int | None = None) -> GIN:
        """The batch-level :class:`fedgin.GIN` with these options (``in_channels`` defaults to ``replicate_to``).

        The module does not replicate channels: give it batches that already have ``in_channels``.
        """
        channels = in_channels if in_channels is not None else self.replicate_to
        if channels is None:
            raise ValueError("RandGIN.as_module needs in_channels when replicate_to is not set")
        return GIN(self.gin_backend, in_channels=channels, spatial_dims=spatial_dims, **self.config)

    def _channels(self, img: NdarrayOrTensor, tensor: bool) -> NdarrayOrTensor:
        """``img`` with ``replicate_to`` channels: a plain tensor if ``tensor`` or replicated, else ``img`` itself.

        The image is checked on every call, whether GIN fires or not, so bad input never fails only at random.
        """
        shape = tuple(img.shape)
        if len(shape) not in (3, 4):
            raise ValueError(f"RandGIN takes one channel-first image [C, H, W] or [C, D, H, W], got shape {shape}")
        values = convert_to_tensor(img, track_meta=False)  # a view of an array or tensor, not a copy
        if not values.is_floating_point():
            raise TypeError(f"RandGIN input must be floating point (float32, float16 or bfloat16), got {img.dtype}")
        if values.device.type == "cpu" and not bool(torch.isfinite(values).all()):  # on a GPU: fedgin.check_errors
            raise ValueError("RandGIN input contains non-finite values (NaN or Inf)")
        n = self.replicate_to
        if n is None or shape[0] == n:
            return values if tensor else img
        if shape[0] != 1:
            raise ValueError(f"RandGIN replicate_to={n} needs a 1-channel image, got {shape[0]} channels")
        return values.expand(n, *shape[1:]).contiguous()


class RandGINd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandGIN`: with probability ``prob``, GIN of every image under ``keys``.

    Each key gets its own network (GIN draws per image, and two modalities of one case should not share
    an intensity mapping); other keys, such as labels, are left as they are.
    """

    backend = RandGIN.backend

    def __init__(self, keys: KeysCollection, prob: float = 0.1, allow_missing_keys: bool = False,
                 replicate_to: int | None = None, backend: str = "auto", **config: Any):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.rand_gin = RandGIN(prob=1.0, replicate_to=replicate_to, backend=backend, **config)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandGINd:
        super().set_random_state(seed, state)
        self.rand_gin.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        for key in self.key_iterator(d):
            d[key] = self.rand_gin(d[key]) if self._do_transform else self.rand_gin.replicate(d[key])
        return d
