"""The one small interface every comparison augmentation follows, its registry, and shared input checks.

An augmentation is built from a config (``make_augmentation("randconv", kernel_sizes=(1, 3))``) and called on a
batch ``x`` [B, C, *S] (2D or 3D): ``aug(x, label=None, generator=None)`` returns one augmented tensor of ``x``'s
shape and dtype, or a tuple of ``n_views`` of them. Nothing needs gradients; with a seeded ``torch.Generator``
the result is deterministic, and the random numbers are drawn on the generator's device (the CPU when there is
none) and then moved, so one seed gives the same augmentation on the CPU and on a GPU.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from fedgin.gin import make_config
from fedgin.params import GINConfig

AUGMENTATIONS: dict[str, type[Augmentation]] = {}

# GIN options an augmentation built on GIN accepts; channels and dimensionality always come from the input.
GIN_OPTIONS = tuple(f for f in GINConfig.__dataclass_fields__ if f not in ("in_channels", "out_channels",
                                                                          "spatial_dims"))


def register(name: str) -> Callable[[type[Augmentation]], type[Augmentation]]:
    """Class decorator: make an augmentation available to :func:`make_augmentation` under ``name``."""

    def add(cls: type[Augmentation]) -> type[Augmentation]:
        if name in AUGMENTATIONS:
            raise ValueError(f"augmentation name {name!r} is registered twice")
        cls.name = name
        AUGMENTATIONS[name] = cls
        return cls

    return add


def make_augmentation(name: str, **options) -> Augmentation:
    """The augmentation registered as ``name``, built with ``options``; unknown names or options are errors."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; known: {sorted(AUGMENTATIONS)}")
    cls = AUGMENTATIONS[name]
    known = cls.option_names()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for augmentation {name!r}; known: {sorted(known)}")
    return cls(**options)


class Augmentation:
    """Base class: subclasses implement :meth:`augment` (one view) or override :meth:`views`."""

    name: ClassVar[str] = ""
    needs_label: ClassVar[bool] = False
    takes_gin_options: ClassVar[bool] = False

    def __init__(self, n_views: int = 1) -> None:
        if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
            raise ValueError(f"{type(self).__name__}: n_views must be an integer >= 1, got {n_views!r}")
        self.n_views = n_views

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The keyword options :func:`make_augmentation` accepts for this class."""
        params = inspect.signature(cls.__init__).parameters
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names = tuple(p for p, v in params.items() if p != "self" and v.kind in kinds)
        return names + (GIN_OPTIONS if cls.takes_gin_options else ())

    def __call__(self, x: Tensor, label: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor | tuple[Tensor, ...]:
        check_images(x)
        if self.needs_label:
            if label is None:
                raise ValueError(f"augmentation {self.name!r} needs the label map: call it with label=...")
            label = check_label(label, x)
        with torch.no_grad():
            views = self.views(x, label, generator)
        return views[0] if len(views) == 1 else views

    def views(self, x: Tensor, label: Tensor | None, generator: torch.Generator | None) -> tuple[Tensor, ...]:
        """``n_views`` independent draws of :meth:`augment`."""
        return tuple(self.augment(x, label, generator) for _ in range(self.n_views))

    def augment(self, x: Tensor, label: Tensor | None, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def eval_input(self, x: Tensor) -> Tensor:
        """What the network reads at validation and test in place of the image batch ``x``: ``x`` itself, except
        for methods whose network only ever reads transformed images (FMAug, RaffeSDG: a fixed high-pass)."""
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


@register("none")
class NoAugmentation(Augmentation):
    """The identity (a copy of the input), so that "no augmentation" is picked by name like the others."""

    def augment(self, x: Tensor, label: Tensor | None, generator: torch.Generator | None) -> Tensor:
        return x.clone()


def gin_options(owner: str, options: dict) -> dict:
    """Check the GIN options of an augmentation built on GIN (keys and values); return them unchanged."""
    unknown = sorted(set(options) - set(GIN_OPTIONS))
    if unknown:
        raise ValueError(f"{owner}: unknown GIN option(s) {unknown}; known: {sorted(GIN_OPTIONS)}")
    make_config(**options)
    return dict(options)


def check_images(x: Tensor) -> int:
    """Raise a ``TypeError``/``ValueError`` naming what is wrong with an image batch; return its spatial dims."""
    if not isinstance(x, Tensor):
        raise TypeError(f"augmentation input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"augmentation input must be floating point, got {x.dtype}")
    if x.dim() not in (4, 5):
        raise ValueError(f"augmentation input must be [B, C, H, W] or [B, C, D, H, W], got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"augmentation input is empty: shape {tuple(x.shape)}")
    return x.dim() - 2


def check_label(label: Tensor, x: Tensor) -> Tensor:
    """The label map of ``x`` as a long tensor [B, *S]; accepts [B, 1, *S] or [B, *S] with integer values >= 0."""
    if not isinstance(label, Tensor):
        raise TypeError(f"label must be a torch.Tensor, got {type(label).__name__}")
    spatial = tuple(x.shape[2:])
    if label.dim() == x.dim() and label.shape[1] == 1:
        label = label[:, 0]
    if tuple(label.shape) != (x.shape[0], *spatial):
        raise ValueError(f"label shape {tuple(label.shape)} does not match the images {tuple(x.shape)}; "
                         f"expected [B, 1, *S] or [B, *S]")
    if label.device != x.device:
        raise ValueError(f"label is on {label.device}, images are on {x.device}")
    if label.is_floating_point() and not bool((label == label.round()).all()):
        raise ValueError("label map must hold integer class indices, got fractional values")
    if label.dtype == torch.bool or label.is_complex():
        raise TypeError(f"label map must hold integer class indices, got {label.dtype}")
    label = label.long()
    if bool((label < 0).any()):
        raise ValueError("label map has negative class indices")
    return label


def work_dtype(x: Tensor) -> torch.dtype:
    """The dtype the augmentations compute in: float64 for float64 input, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def draw_device(generator: torch.Generator | None) -> torch.device:
    """Where random numbers are drawn: the generator's device, else the CPU (then moved to the data)."""
    return generator.device if generator is not None else torch.device("cpu")


def target_device(device: torch.device | str | None, generator: torch.Generator | None) -> torch.device:
    """``device`` if given, else where the generator draws."""
    return torch.device(device) if device is not None else draw_device(generator)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard normal float32 numbers drawn on the generator's device, returned on ``device``."""
    return torch.randn(shape, generator=generator, device=draw_device(generator)).to(device)


def rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U(0, 1) float32 numbers drawn on the generator's device, returned on ``device``."""
    return torch.rand(shape, generator=generator, device=draw_device(generator)).to(device)


def randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Integers uniform in [0, high) drawn on the generator's device, returned on ``device``."""
    return torch.randint(high, shape, generator=generator, device=draw_device(generator)).to(device)
