"""Triton kernels for rCM distillation (tensors only; no modules, no diffusers).

- `jvp_attention`: flash-attention forward that returns O, its JVP tangent tO and the log-sum-exp in one pass
  (op `torch.ops.turbo.jvp_attention`). Its pure-PyTorch spec is `turbo.distill.jvp_attention`.

Importing this package needs `triton`; on a machine without CUDA the kernels only run under `TRITON_INTERPRET=1`
(set before import), which the CPU tests use."""
