"""Training-side losses of the comparison methods: the multi-view consistency of RandConv / GIN-IPA and
RaffeSDG's high-frequency reconstruction."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fedgin.augment.frequency import high_frequency_target


def kl_consistency(logits: Sequence[Tensor], reverse: bool = False) -> Tensor:
    """Consistency of the predictions of several views of a batch: ``logits`` are [B, K, *S] (or [B, K]).

    With ``p_i = softmax(logits_i)`` and ``m`` their mean over the views:

    - default (RandConv, wildphoton/RandConv ``randconv_trainer.py``, after AugMix): mean over views of
      ``KL(p_i || m)`` with ``m`` clamped to [1e-7, 1];
    - ``reverse=True`` (GIN-IPA, ``models/exp_trainer.py``: ``KLDivLoss(log_softmax(pred), m)``): mean over views
      of ``KL(m || p_i)``.

    Reduction: sum over classes, mean over samples and voxels (RandConv's ``batchmean`` for classification).
    GIN-IPA's ``KLDivLoss()`` also averages over the K classes, so its weight 10 corresponds to 10 / K here.
    The mean ``m`` is not detached (neither original detaches it).
    """
    if len(logits) < 2:
        raise ValueError(f"kl_consistency needs at least two views, got {len(logits)}")
    shape = logits[0].shape
    if any(t.shape != shape for t in logits) or len(shape) < 2:
        shapes = [tuple(t.shape) for t in logits]
        raise ValueError(f"kl_consistency views must share one shape [B, K, *S], got {shapes}")
    # in log space throughout: a probability that underflows to 0 would make the gradient of p log p infinite
    log_probs = [F.log_softmax(t, dim=1) for t in logits]
    log_mean = torch.logsumexp(torch.stack(log_probs), 0) - math.log(len(log_probs))
    if reverse:
        terms = [F.kl_div(lp, log_mean, reduction="none", log_target=True) for lp in log_probs]
    else:
        log_mean = log_mean.clamp(math.log(1e-7), 0)
        terms = [F.kl_div(log_mean, lp, reduction="none", log_target=True) for lp in log_probs]
    return torch.stack([t.sum(1).mean() for t in terms]).mean()


def high_frequency_loss(prediction: Tensor, x: Tensor, kernel_size: int = 27, sigma: float = 9.0,
                        ratio: float = 4.0) -> Tensor:
    """RaffeSDG's reconstruction loss: MSE between the head's output and the high-frequency image of ``x``
    (the un-augmented input; :func:`fedgin.augment.frequency.high_frequency_target`)."""
    target = high_frequency_target(x, kernel_size, sigma, ratio).to(prediction.dtype)
    if prediction.shape != target.shape:
        raise ValueError(f"high_frequency_loss: prediction {tuple(prediction.shape)} and images {tuple(x.shape)} "
                         f"differ in shape")
    return F.mse_loss(prediction, target)
