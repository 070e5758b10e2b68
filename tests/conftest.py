"""Test setup: Triton kernels run through the interpreter on machines without a GPU (set before any import), and
pytest-benchmark's timings become a smoke check (each benchmark once, as ``--benchmark-disable``; ``--benchmark-enable``
still forces them); the fixture that interrupts an experiment at a named arm."""
import contextlib
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not torch.cuda.is_available() and hasattr(config.option, "benchmark_disable"):
        config.option.benchmark_disable = True


@pytest.fixture
def interrupted_at():
    """``with interrupted_at(arm): ...``: the experiment's arm ``arm`` raises KeyboardInterrupt as it starts (the
    arms before it train), and the block must end in that interruption."""
    from fedgin.fl import experiment

    @contextlib.contextmanager
    def interrupted(arm: str):
        train_arm = experiment.run

        def run(cfg, run_dir, **kwargs):
            if Path(run_dir).name == arm:
                raise KeyboardInterrupt
            return train_arm(cfg, run_dir, **kwargs)

        with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
            patch.setattr(experiment, "run", run)
            yield

    return interrupted


@pytest.fixture
def no_tf32():
    """cuDNN runs "float32" convolutions in TF32 by default: the GPU tests' references must not."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
