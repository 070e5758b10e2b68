"""Without a CUDA GPU the pytest-benchmark tests are a smoke check: each benchmark runs once, as with
``--benchmark-disable`` (``--benchmark-enable`` still forces timing)."""
import pytest
import torch


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not torch.cuda.is_available() and hasattr(config.option, "benchmark_disable"):
        config.option.benchmark_disable = True
