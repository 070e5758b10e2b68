"""Local training (losses, GIN views, FedProx, divergence) and evaluation (Dice, HD95 per organ)."""
import math

import pytest
import torch

from fedgin.augment.losses import kl_consistency
from fedgin.config import load_config
from fedgin.train.data import Case
from fedgin.train.evaluate import case_scores, evaluate_cases
from fedgin.train.local import TrainingDiverged, batch_order, train_local
from fedgin.train.model import make_model


def tiny(**over):
    sets = ["model.channels=[4, 8]", "model.strides=[2]", "data.size=16", "train.batch_size=4"]
    return load_config(overrides=sets + [f"{k}={v}" for k, v in over.items()])


def blobs(n=8, size=16):
    """Bright squares (organ 1) on a dark background: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    for i in range(n):
        r, c = torch.randint(0, size - 6, (2,), generator=g).tolist()
        y[i, 0, r:r + 6, c:c + 6] = 1
    x = y.float() * 0.8 + 0.1 * torch.rand(n, 1, size, size, generator=g)
    return x, y


def test_batch_order_epochs_and_steps():
    g = torch.Generator().manual_seed(0)
    batches = batch_order(10, tiny(**{"train.local_epochs": 2}), g)
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(torch.cat(batches[:3]).tolist()) == list(range(10))
    assert [len(b) for b in batch_order(10, tiny(**{"train.local_steps": 5}), g)] == [4] * 5


@pytest.mark.parametrize("aug", [{}, {"aug.method": "gin"}, {"aug.method": "gin", "aug.views": 2, "fed.prox_mu": 0.1},
                                 {"aug.method": "gin", "aug.views": 3, "data.channels": 3}])
def test_training_lowers_the_loss(aug):
    cfg = tiny(**{"train.local_steps": 20, "train.lr": 0.01}, **aug)
    torch.manual_seed(0)
    model = make_model(cfg)
    x, y = blobs()
    anchor = {k: v.detach().clone() for k, v in model.named_parameters()}
    first = train_local(model, x, y, cfg, torch.Generator().manual_seed(1), anchor=anchor)
    later = train_local(model, x, y, cfg, torch.Generator().manual_seed(2), anchor=anchor)
    assert later["loss"] < first["loss"]
    assert first["steps"] == 20 and first["step_time"] > 0
    assert (first["gin_share"] > 0) == ("aug.method" in aug)


def test_gin_draws_follow_the_generator():
    cfg = tiny(**{"train.local_steps": 2, "aug.method": "gin"})
    x, y = blobs()
    states = []
    for seed in (5, 5, 6):
        torch.manual_seed(0)
        model = make_model(cfg)
        train_local(model, x, y, cfg, torch.Generator().manual_seed(seed))
        states.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(states[0], states[1]) and not torch.equal(states[0], states[2])


def test_divergence_is_a_clear_error():
    cfg = tiny(**{"train.local_steps": 2})
    x, y = blobs()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"diverged \(nan\) at site-x step 0"):
        train_local(make_model(cfg), x, y, cfg, torch.Generator(), desc="site-x")


def test_consistency_loss():
    a = torch.randn(2, 3, 4, 4)
    assert kl_consistency([a, a.clone(), a.clone()], reverse=True).abs() < 1e-6
    assert kl_consistency([a, torch.randn(2, 3, 4, 4)], reverse=True) > 0.01


def test_case_scores_dice_and_hd95():
    label = torch.zeros(8, 8, 4, dtype=torch.uint8)
    label[1:4, 1:4, 1:3] = 1
    label[5:7, 5:7, 1:3] = 2
    dice, hd = case_scores(label, label, 4, hd95=True)
    assert dice[:2].tolist() == [1.0, 1.0] and math.isnan(dice[2])  # organ 3 absent from the truth
    assert hd[:2].tolist() == [0.0, 0.0] and math.isnan(hd[2])
    pred = label.clone()
    pred[pred == 2] = 0  # organ 2 missed entirely
    pred[1:4, 1:4, 3] = 1  # organ 1 overgrown by one slice
    dice, hd = case_scores(pred, label, 4, hd95=True)
    assert dice[0] == pytest.approx(2 * 18 / (18 + 27)) and dice[1] == 0
    assert hd[0] == pytest.approx(1.0) and hd[1] == pytest.approx(math.sqrt(8 * 8 + 8 * 8 + 4 * 4))


def test_evaluate_cases_per_patient_in_3d():
    cfg = tiny(**{"train.local_steps": 60, "train.lr": 0.01})
    x, y = blobs(12)
    torch.manual_seed(0)
    model = make_model(cfg)
    train_local(model, x, y, cfg, torch.Generator().manual_seed(0))
    # two patients of 6 slices each, slices along the last axis
    cases = [Case(f"p{i}", x[6 * i:6 * i + 6, 0].permute(1, 2, 0)[None], y[6 * i:6 * i + 6, 0].permute(1, 2, 0)[None])
             for i in range(2)]
    m = evaluate_cases(model, cases, cfg.data.organs, 1, "2d")
    assert m["dice/liver"] > 0.8 and m["hd95/liver"] < 3
    assert math.isnan(m["dice/spleen"]) and m["dice/mean"] == pytest.approx(m["dice/liver"])
