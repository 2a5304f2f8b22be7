"""Running one training step fast: a whole step (forward, backward, clipping, optimizer, EMA) replayed as a CUDA graph
(`GraphedStep`), a ``torch.compile``'d forward (`CompiledForward`), and the update they share (`backward_and_step`).

Neither falls back to eager silently: a CUDA-graph request without CUDA, a failed capture and a failed compile are each
logged as a warning that says the step runs eagerly (logger "turbo").

CUDA graphs: the ToyWorld models are small; eager training on an H100 is bound by kernel launches and Python (the Wan
VAE's frame-by-frame causal loop launches thousands of small kernels per step). Capturing the step once per input
signature and replaying it removes that overhead. The recipe is PyTorch's "whole network capture": a few eager warm-up
steps on a side stream, ``zero_grad(set_to_none=True)``, capture, then copy each step's inputs into the captured
(static) input tensors and replay. The optimizer must be capturable (`build_optimizer(capturable=True)`), autocast must
not cache casts (`autocast`), and the step must not synchronise with the CPU. All signatures share one memory pool:
between replays nothing captured stays alive except the loss, which is copied out right after each replay.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import torch

__all__ = ["CompiledForward", "GraphedStep", "autocast", "backward_and_step", "use_cuda_graphs"]

logger = logging.getLogger("turbo")


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else ""


def autocast(device: torch.device):
    """bf16 autocast on CUDA, without the cast cache (a captured CUDA graph must not keep casts across steps); on
    other devices a no-op (fp32)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def use_cuda_graphs(requested: bool, device=None, what: str = "training step") -> bool:
    """Whether a step on `device` can replay as a CUDA graph when `requested`; a request that cannot be met (a
    non-CUDA device, or no GPU) logs a warning that the step runs eagerly. Decide this before building the optimizer:
    a graphed step needs a capturable one."""
    if not requested:
        return False
    if device is not None and torch.device(device).type != "cuda":
        logger.warning("CUDA graphs were requested for the %s but the device is %s: it runs eagerly (no graph "
                       "capture)", what, torch.device(device))
        return False
    if not torch.cuda.is_available():
        logger.warning("CUDA graphs were requested for the %s but CUDA is not available: it runs eagerly (no graph "
                       "capture)", what)
        return False
    return True


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params, grad_clip: float = 0.0,
                      ema=None, model: torch.nn.Module | None = None) -> None:
    """Backward, optional gradient-norm clipping, optimizer step and EMA update of `model` (no CPU synchronisation:
    CUDA-graph safe)."""
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    if ema is not None:
        ema.update(model)


class GraphedStep:
    """Call ``step(*tensors) -> loss`` (a 0-d tensor; the step does backward and the update itself) for one batch.

    With `enabled` on a CUDA device the first `warmup` calls per signature (shapes and dtypes of the inputs) run
    eagerly, the next one captures a CUDA graph and every later call replays it. `enabled` without CUDA (`device`
    not CUDA, or no GPU) runs every call eagerly and logs a warning saying so; a failed capture does the same. Eager
    calls clear the gradients first, as the captured graph writes them afresh. Returns the loss, detached and owned
    by the caller.
    """

    def __init__(self, step: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer, enabled: bool,
                 warmup: int = 3, device=None, name: str = "training step"):
        self.step, self.optimizer, self.warmup, self.name = step, optimizer, warmup, name
        self.enabled = use_cuda_graphs(enabled, device, name)
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
        except Exception as error:  # noqa: BLE001 - any capture failure: keep training eagerly, and say so
            logger.warning("CUDA graph capture of the %s failed (%s: %s); it runs eagerly from now on", self.name,
                           type(error).__name__, _first_line(error))
            self.enabled = False
            self._graphs.clear()
            torch.cuda.synchronize()
            return self._eager(inputs)
        self._graphs[key] = (graph, static, loss)
        logger.info("captured the %s as a CUDA graph for inputs %s", self.name,
                    ", ".join("x".join(map(str, k[0])) for k in key))
        graph.replay()  # capturing only records the kernels: this step's update happens here
        return loss.clone()


class CompiledForward:
    """``torch.compile(module, dynamic=False)`` when `enabled` (one graph per input shape), called like the module.

    If compiling fails, logs a warning naming the error and calls the module eagerly from then on (a failed first
    call has changed nothing: no backward or update ran yet). ``compiled`` tells which path runs now.
    """

    def __init__(self, module: torch.nn.Module, enabled: bool, name: str | None = None):
        self.module, self.name = module, name or type(module).__name__
        self.compiled = torch.compile(module, dynamic=False) if enabled else None

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compiler failure: run eagerly, and say so
                logger.warning("torch.compile of the %s failed (%s: %s); its forward runs eagerly from now on",
                               self.name, type(error).__name__, _first_line(error))
                self.compiled = None
        return self.module(*args, **kwargs)
