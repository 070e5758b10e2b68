"""fedgin's nnU-Net v2 trainers (:mod:`fedgin.integrations.nnunet`) through nnU-Net's own code: its trainer lookup,
its planning and preprocessing of fedgin's phantom, its trainer construction, one short training on the CPU and its
checkpoint. Runs where nnunetv2 is installed: ``.ci/run``'s nnU-Net environment runs this file alone (``-m nnunet``)."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from nnunetv2.run.run_training import get_trainer_from_args  # noqa: E402
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name  # noqa: E402

from fedgin import gin_views  # noqa: E402
from fedgin.cli import main  # noqa: E402
from fedgin.integrations import nnunet  # noqa: E402

pytestmark = [pytest.mark.nnunet, pytest.mark.slow]
NAMES = [t.__name__ for t in nnunet.TRAINERS]
DATASET = "Dataset501_Phantom"


def _fedgin(*args: str) -> str:
    """What ``fedgin ARGS`` prints (run in this process)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(args)) == 0
    return out.getvalue().strip()


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory):
    """nnU-Net's folders and settings for a CPU run (no compile; no augmentation workers once preprocessed), with
    fedgin's trainers exported as its README says; the phantom (2D CT) planned and preprocessed by nnU-Net's own
    command."""
    root = tmp_path_factory.mktemp("nnunet")
    env = {"nnUNet_raw": root / "raw", "nnUNet_preprocessed": root / "preprocessed", "nnUNet_results": root / "results",
           "nnUNet_extTrainer": _fedgin("nnunet", "trainers-dir"), "nnUNet_compile": "f"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, str(value))
        _fedgin("synth", str(root / "raw" / DATASET), "--layout", "nnunet", "--cases", "6", "--size", "64")
        subprocess.run([str(Path(sys.executable).with_name("nnUNetv2_plan_and_preprocess")), "-d", "501", "-c", "2d",
                        "-np", "1", "--verify_dataset_integrity"], check=True)
        patch.setenv("nnUNet_n_proc_DA", "0")  # training only: nnU-Net 2.8's planner sets torch's threads to it
        yield root


def test_trainers_dir_is_the_folder_of_the_module_nnunet_imports():
    folder = Path(_fedgin("nnunet", "trainers-dir"))
    assert sorted(p.name for p in folder.glob("*.py")) == ["fedgin_trainers.py"]


def test_nnunets_lookup_finds_every_trainer_only_through_the_export(nnunet_env, monkeypatch):
    for trainer in nnunet.TRAINERS:
        assert recursive_find_trainer_class_by_name(trainer.__name__) is trainer
    monkeypatch.delenv("nnUNet_extTrainer")
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer"):
        recursive_find_trainer_class_by_name(NAMES[0])


def _norms(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).norm(dim=2)


@pytest.mark.parametrize("name", NAMES)
def test_one_short_cpu_training(nnunet_env, name):
    """Built as ``nnUNetv2_train 501 2d 0 -tr NAME -device cpu`` builds it (nnU-Net's lookup included), trained for
    one short epoch: GIN on every training batch and on no validation batch, intensities changed with each channel's
    norm kept (GIN's renormalization; for GIN-IPA the third view's), finite losses, a checkpoint that loads back."""
    torch.manual_seed(0)  # GIN's draws (α ~ U(0, 1) a sample: a small one changes a batch little)
    trainer = get_trainer_from_args("501", "2d", 0, name, device=torch.device("cpu"))
    assert type(trainer).__name__ == name
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 3, 2
    seen, phase = [], {"validating": False}
    augment, validation_step = trainer.gin_augment, trainer.validation_step

    def gin_augment(data):
        out = augment(data)
        seen.append((phase["validating"], data.clone(), out.clone()))
        return out

    def validate(batch):
        phase["validating"] = True
        try:
            return validation_step(batch)
        finally:
            phase["validating"] = False

    trainer.gin_augment, trainer.validation_step = gin_augment, validate
    trainer.run_training()

    assert len(seen) == 3 and not any(validating for validating, _, _ in seen)
    for _, x, out in seen:
        view = out[-x.shape[0]:]  # the batch's GIN; GIN-IPA's third view (the first two are its blends)
        assert out.shape[0] == x.shape[0] * (3 if name == "nnUNetTrainerGIN_IPA" else 1)
        assert torch.isfinite(out).all()
        assert (view - x).norm() > 0.01 * x.norm()
        torch.testing.assert_close(_norms(view), _norms(x), rtol=1e-4, atol=1e-4)
    losses = trainer.logger.get_value("train_losses", None)
    assert len(losses) == 1 and np.isfinite(losses).all()
    assert np.isfinite(trainer.logger.get_value("val_losses", None)).all()

    checkpoint = Path(trainer.output_folder) / "checkpoint_final.pth"
    assert checkpoint.is_file()
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["trainer_name"] == name
    fresh = get_trainer_from_args("501", "2d", 0, name, device=torch.device("cpu"))
    fresh.load_checkpoint(str(checkpoint))
    for key, value in fresh.network.state_dict().items():
        torch.testing.assert_close(value, trainer.network.state_dict()[key], rtol=0, atol=0)


def test_gin_batch_treats_each_channel_as_a_sample():
    """Multi-channel batches (T1 + T2, say): each channel is renormalized to its own norm. Shared draws one network a
    channel for the batch: two equal samples' outputs are then mixes of one network's output and the input (each its
    own α), so with the input they span a plane; per-sample networks span three dimensions."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, 17, 19, dtype=torch.float64) * torch.tensor([1.0, 5.0], dtype=torch.float64).view(1, 2, 1, 1)
    x[1] = x[0]
    for shared in (False, True):
        out = nnunet.gin_batch(x, shared)
        torch.testing.assert_close(_norms(out), _norms(x), rtol=1e-5, atol=0)  # eps in the norm's denominator
        for c in range(2):
            s = torch.linalg.svdvals(torch.stack([out[0, c], out[1, c], x[0, c]]).flatten(1))
            assert (s[2] / s[0] < 1e-9) == shared, (shared, c, s)
    x_nan = x.clone()
    x_nan[2, 1, 3, 4] = float("nan")
    for shared in (False, True):
        with pytest.raises(ValueError, match="non-finite"):
            nnunet.gin_batch(x_nan, shared)
    volume = torch.randn(2, 2, 5, 9, 11)  # 3D patches alike
    torch.testing.assert_close(_norms(nnunet.gin_batch(volume)), _norms(volume), rtol=1e-4, atol=0)
    views = nnunet.gin_ipa_batch(x, seed=5)
    g = gin_views(x.reshape(6, 1, 17, 19), 3, seed=5).view(3, 3, 2, 17, 19)
    assert views.shape == (9, 2, 17, 19)
    torch.testing.assert_close(views[:3] + views[3:6], g[0] + g[1])  # the IPA pair blends GIN1 and GIN2
    torch.testing.assert_close(views[6:], g[2])


def test_the_nnunet_step_benchmark_times_every_arm(nnunet_env, tmp_path):
    """``python -m bench.nnunet_step`` (GIN's share of an nnU-Net iteration; its GPU figure is bench/gpu.sh's) runs
    its three arms on the CPU: the reference and "auto" are the same backend here, so only the rows are checked."""
    from bench import nnunet_step

    out = tmp_path / "step.json"
    assert nnunet_step.main(["501", "2d", "--device", "cpu", "--steps", "2", "--warmup", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == list(nnunet_step.ARMS)
    assert all(row["step_ms"] > 0 and row["batch"][1:] == [1, 64, 64] for row in rows.values())
    assert all(rows[arm]["gin_ms"] > 0 for arm in ("GIN, reference", "GIN, fused"))
    assert "gin_ms" not in rows["nnU-Net, no GIN"]


def test_views_loss_adds_the_consistency_of_k_views_and_passes_one_view_through():
    """GIN-IPA's loss inside nnU-Net's own train_step: nnU-Net's loss on the first view (each deep-supervision scale),
    plus GIN-IPA's weight (10 / K) × the reverse KL of the views at full resolution; validation's B-sample output
    takes nnU-Net's loss alone."""
    from fedgin.augment.losses import kl_consistency

    def base(output, target):  # a stand-in for nnU-Net's deep-supervised loss: records what it is given
        calls.append([o.shape[0] for o in output])
        return sum(o.float().mean() for o in output) + 0 * target[0].sum()

    calls = []
    torch.manual_seed(0)
    assert nnunet.default_consistency("gin_ipa", 4) == (2.5, True)  # what nnUNetTrainerGIN_IPA builds it with
    loss = nnunet.ViewsLoss(base, 2.5, reverse=True)
    output = [torch.randn(6, 4, 8, 8), torch.randn(6, 4, 4, 4)]
    target = [torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 4, 4)]
    expected = base([o[:2] for o in output], target) + 2.5 * kl_consistency(list(output[0].split(2)), reverse=True)
    torch.testing.assert_close(loss(output, target), expected)
    assert calls[-1] == [2, 2]
    first = [o[:2] for o in output]
    torch.testing.assert_close(loss(first, target), base(first, target))
