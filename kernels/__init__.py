"""Fused Triton GIN kernels (installed as ``fedgin.kernels``): Triton only, no torch.nn, no I/O."""
from .launch import gin_fused, gin_ipa_fused, make_plan, pack_params, unsupported_reason

__all__ = ["gin_fused", "gin_ipa_fused", "make_plan", "pack_params", "unsupported_reason"]
