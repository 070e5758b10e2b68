"""The kernel lab: study tools for the fused GIN kernel, not installed with fedgin (run from a checkout,
``python -m tools.kernel_lab.<tool>``; tests in ``tests/test_lab_*.py``, slow tier).

- ``sass``: an issue-slot model of the stream kernel's plane loop from its sm_90 SASS (compiled on a CPU);
- ``ablate``: the kernel timed with one class of its loop's instructions patched out of the cubin (GPU);
- ``ncu_target``: the headline kernels, for Nsight Compute (GPU);
- ``half_math``: the rounding error of half-precision conv math, emulated (CPU).
"""
