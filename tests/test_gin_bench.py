"""pytest-benchmark over the suite's registry: the ``quick`` preset's cases on a CPU (a smoke check, run once
each), the ``paper`` preset's on a GPU. Every output is checked against the float64 reference.

    python -m pytest tests/test_gin_bench.py -q --benchmark-json=bench.json     # medians in the JSON (GPU)
"""
import pytest
import torch

from fedgin import reference_apply
from fedgin.bench.cases import draw_params, get_preset, image_like
from fedgin.bench.registry import IMPLEMENTATIONS, skip_reason
from fedgin.bench.suite import TOLERANCE, relative_error
from fedgin.bench.timing import exact_fp32, sync

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PRESET = get_preset("paper" if DEVICE.type == "cuda" else "quick")


@pytest.mark.parametrize("impl", [pytest.param(name, marks=pytest.mark.slow) if name.startswith("triton") else name
                                  for name in IMPLEMENTATIONS])  # the kernels: through the interpreter on a CPU
@pytest.mark.parametrize("case", PRESET.cases, ids=[c.id for c in PRESET.cases])
def test_gin(benchmark, case, impl):
    entry = IMPLEMENTATIONS[impl]
    if entry.name == "compile" and DEVICE.type == "cpu":
        pytest.skip("torch.compile takes ~20 s per shape on a CPU; `python -m bench` covers it")
    if not entry.reference_check and DEVICE.type == "cpu":
        pytest.skip("a comparison augmentation: on the CPU tests/test_bench_augment.py covers it")
    reason = skip_reason(entry, case, DEVICE, PRESET.name, float("inf"))
    if reason:
        pytest.skip(reason)
    params = draw_params(case, DEVICE, per_sample=not entry.shared_network, generator=torch.Generator().manual_seed(0))
    x = image_like(case, DEVICE, torch.Generator(device=DEVICE).manual_seed(0))
    fn = entry.prepare(case, DEVICE)

    def call():
        out = fn(x, params)
        sync(DEVICE)
        return out

    with exact_fp32():
        out = call()
        err = relative_error(out, reference_apply(x.double(), params)) if entry.reference_check else None
    assert out.shape == x.shape and (err is None or err <= TOLERANCE[case.dtype])  # None: not GIN, no check
    benchmark.extra_info.update(pixels=case.pixels, min_bytes=case.min_bytes, case=case.label, rel_error=err)
    benchmark(call)
