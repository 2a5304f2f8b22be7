"""One whole training step (forward, backward, clipping, optimizer, EMA) replayed as a CUDA graph.

The ToyWorld models are small: eager training on an H100 is bound by kernel launches and Python (the Wan VAE's
frame-by-frame causal loop launches thousands of small kernels per step; the transformers run at ~13 steps/s with the
GPU mostly idle). Capturing the step once per input signature and replaying it removes that overhead. The recipe is
PyTorch's "whole network capture": a few eager warm-up steps on a side stream, ``zero_grad(set_to_none=True)``, capture,
then copy each step's inputs into the captured (static) input tensors and replay. The optimizer must be capturable
(``AdamW(capturable=True)`` with a tensor learning rate, see `train._optimizer`), autocast must not cache casts, and the
step must not synchronise with the CPU. If capturing fails, training goes on eagerly with a warning.

All signatures share one memory pool: between replays nothing captured stays alive except the loss, which is copied
out right after each replay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

logger = logging.getLogger("turbo")

__all__ = ["GraphedStep"]


class GraphedStep:
    """Call ``step(*tensors) -> loss`` (a 0-d tensor; the step does backward and the update itself) for one batch.

    With `enabled` (CUDA only) the first `warmup` calls per signature (shapes and dtypes of the inputs) run eagerly,
    the next one captures a CUDA graph and every later call replays it. Eager calls clear the gradients first, as the
    captured graph writes them afresh. Returns the loss, detached and owned by the caller.
    """

    def __init__(self, step: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer, enabled: bool,
                 warmup: int = 3):
        self.step, self.optimizer, self.warmup = step, optimizer, warmup
        self.enabled = bool(enabled) and torch.cuda.is_available()
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}
        self._calls: dict[tuple, int] = {}
        self._pool = None

    def _eager(self, inputs) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        return self.step(*inputs).detach()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self._eager(inputs)
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        if key in self._graphs:
            graph, static, loss = self._graphs[key]
            for dst, src in zip(static, inputs, strict=True):
                dst.copy_(src)
            graph.replay()
            return loss.clone()
        self._calls[key] = self._calls.get(key, 0) + 1
        if self._calls[key] <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self._eager(inputs)
            torch.cuda.current_stream().wait_stream(side)
            return loss
        return self._capture(key, inputs)

    def _capture(self, key, inputs) -> torch.Tensor:
        static = [t.clone() for t in inputs]
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                loss = self.step(*static).detach()
        except Exception as error:  # noqa: BLE001 - any capture failure: keep training eagerly
            logger.warning("CUDA graph capture of the training step failed (%s: %s); training eagerly",
                           type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            self.enabled = False
            self._graphs.clear()
            torch.cuda.synchronize()
            return self._eager(inputs)
        self._graphs[key] = (graph, static, loss)
        logger.info("captured the training step as a CUDA graph for inputs %s",
                    ", ".join("x".join(map(str, k[0])) for k in key))
        graph.replay()  # capturing only records the kernels: this step's update happens here
        return loss.clone()
