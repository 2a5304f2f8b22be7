"""Application layer of turbo: ready-made pipelines for the CLI demo, the tests and the benchmarks.

``turbo`` itself (the library) only patches existing diffusers pipelines; this package builds them.
``pipelines.tiny`` constructs small random-weight Wan / Wan2.2 / HunyuanVideo pipelines fully offline.
"""
