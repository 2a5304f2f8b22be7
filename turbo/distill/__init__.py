"""rCM step distillation and SLA fine-tuning.

Not built yet: `SamplerConfig(mode="rcm")` raises `NotImplementedMethodError` at `accelerate()` time."""
