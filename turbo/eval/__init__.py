"""Evaluation: the ToyWorld judge (`turbo.eval.judge.judge`: per-attribute correctness of a video against its prompt).

The function is not re-exported here, so `turbo.eval.judge` stays the module.
"""
