"""Linear-layer quantisation (W8A8 FP8/INT8, NVFP4/INT8 mixed precision).

Not built yet: `TurboConfig(quant=QuantConfig(mode=...))` with any mode but "off" raises `NotImplementedMethodError`
at `accelerate()` time."""
