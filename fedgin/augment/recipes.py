"""How a trainer uses each augmentation: views per batch, the clean image, the consistency loss and its weight,
RaffeSDG's reconstruction loss. One :class:`Recipe` per run, built by :func:`make_recipe`.

Defaults are each method's published training (docs/methods.md):

| method | views per batch | clean view | consistency (weight) | other |
|---|---|---|---|---|
| none | the image | - | - | |
| gin | 1 (``views`` 2-3: the original GIN's) | no | KL(m ‖ p_i), 10 / K | |
| gin_ipa | 3 | no | KL(m ‖ p_i), 10 / K | |
| randconv | 2 | yes | KL(p_i ‖ m), 10 (RandConv-mix) | |
| pro_randconv, fmaug, semantic_randconv | 1 | no | with ``views`` > 1: KL(p_i ‖ m), 10 | |
| raffesdg | 1 | no | as above | high-frequency reconstruction, MSE, weight 1 |

The segmentation loss is on the first forward group (the clean image when there is one). K is the number of
classes (the original GIN training's ``KLDivLoss()``, weight 10 with or without IPA, averages over classes;
:func:`kl_consistency` sums over them).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from fedgin.augment.base import AUGMENTATIONS, GIN_OPTIONS, Augmentation, make_augmentation

# method: (default views, clean view, reverse KL, default consistency weight; "K" divides it by the classes)
_RECIPES: dict[str, tuple[int, bool, bool, float, bool]] = {
    "none": (1, False, False, 0.0, False),
    "gin": (1, False, True, 10.0, True),
    "gin_ipa": (3, False, True, 10.0, True),
    "randconv": (2, True, False, 10.0, False),
    "pro_randconv": (1, False, False, 10.0, False),
    "fmaug": (1, False, False, 10.0, False),
    "raffesdg": (1, False, False, 10.0, False),
    "semantic_randconv": (1, False, False, 10.0, False),
}
FIXED_VIEWS = {"gin_ipa": 3}
RECONSTRUCTION = ("raffesdg",)


def reserved_options(method: str) -> dict[str, str]:
    """The options of ``method`` that a recipe sets itself, each with the setting that sets it instead."""
    cls = AUGMENTATIONS[method]
    reserved = {"n_views": "aug.views", "backend": "aug.backend", "n_classes": "data.organs"}
    if cls.takes_gin_options:
        reserved.update({k: f"aug.gin.{k}" for k in GIN_OPTIONS})
    return {k: v for k, v in reserved.items() if k in cls.option_names()}


@dataclass(frozen=True)
class Recipe:
    """One run's use of its augmentation (``augmentation`` None: train on the images as they are)."""

    method: str
    augmentation: Augmentation | None
    clean_view: bool
    consistency_weight: float
    reverse_kl: bool
    reconstruction_weight: float

    @property
    def n_forward(self) -> int:
        """Forward groups per batch (the clean image counts)."""
        return (self.augmentation.n_views if self.augmentation else 1) + (1 if self.clean_view else 0)

    def eval_input(self, x: Tensor) -> Tensor:
        """The network's input at validation and test for an image batch ``x`` (:meth:`Augmentation.eval_input`)."""
        return x if self.augmentation is None else self.augmentation.eval_input(x)

    def views(self, x: Tensor, label: Tensor, generator: torch.Generator | None) -> list[Tensor]:
        """The forward groups of a batch ``x`` (label needed by label-aware methods)."""
        if self.augmentation is None:
            return [x]
        out = self.augmentation(x, label=label if self.augmentation.needs_label else None, generator=generator)
        return ([x] if self.clean_view else []) + list(out if isinstance(out, tuple) else (out,))


def default_consistency(method: str, n_classes: int) -> tuple[float, bool]:
    """``method``'s consistency weight (divided by ``n_classes`` where the original averages over classes) and
    whether its KL is reversed (module docstring)."""
    _, _, reverse, weight, per_class = _RECIPES[method]
    return (weight / n_classes if per_class else weight), reverse


def make_recipe(method: str, *, n_classes: int, views: int | None = None, consistency_weight: float | None = None,
                options: Mapping | None = None, gin: Mapping | None = None, backend: str = "auto",
                reconstruction_weight: float = 1.0) -> Recipe:
    """The recipe of ``method``; ``None`` settings take the method's default (module docstring).

    ``options`` go to :func:`make_augmentation` (unknown or reserved ones are errors naming them); ``gin`` and
    ``backend`` reach the GIN-based methods; ``n_classes`` (background included) reaches semantic_randconv.
    """
    if method not in _RECIPES:
        raise ValueError(f"unknown augmentation method {method!r}; choose one of {list(_RECIPES)}")
    default_views, clean = _RECIPES[method][:2]
    default_weight, reverse = default_consistency(method, n_classes)
    options = dict(options or {})
    reserved = reserved_options(method)
    for key in options:
        if key in reserved:
            raise ValueError(f"option {key!r} is set by {reserved[key]}, not by the method's options")
    if method in FIXED_VIEWS and views not in (None, FIXED_VIEWS[method]):
        raise ValueError(f"{method} always makes {FIXED_VIEWS[method]} views, got views={views}")
    if views is not None and (views < 1 or method == "none" and views != 1):
        raise ValueError(f"views must be >= 1 (1 without augmentation), got {views}")
    n_views = views or default_views
    augmentation = None
    if method != "none":
        cls = AUGMENTATIONS[method]
        names = cls.option_names()
        kwargs = {**options}
        if "n_views" in names:
            kwargs["n_views"] = n_views
        if "backend" in names:
            kwargs["backend"] = backend
        if "n_classes" in names:
            kwargs["n_classes"] = n_classes
        if cls.takes_gin_options:
            kwargs.update(gin or {})
        augmentation = make_augmentation(method, **kwargs)
    if consistency_weight is None:
        consistency_weight = default_weight
    if consistency_weight < 0 or reconstruction_weight < 0:
        raise ValueError("loss weights must be >= 0")
    recipe = Recipe(method, augmentation, clean, float(consistency_weight), reverse,
                    float(reconstruction_weight) if method in RECONSTRUCTION else 0.0)
    if recipe.n_forward == 1:
        recipe = Recipe(method, augmentation, clean, 0.0, reverse, recipe.reconstruction_weight)
    return recipe
