"""Triton kernels for turbo's attention methods. Each has a pure-PyTorch oracle in `turbo/attention/reference.py`.

Importing this package needs `triton`; on a machine without CUDA the kernels only run under `TRITON_INTERPRET=1`
(set before import), which the CPU tests use."""
