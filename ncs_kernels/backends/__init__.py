"""Thin Python wrappers over the native extension ncs_kernels._C (cpu and cuda backends)."""
