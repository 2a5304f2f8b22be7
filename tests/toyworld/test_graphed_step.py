"""CUDA-graph training steps: the same losses as eager training (GPU), the eager fallback and the tensor learning-rate
schedule (CPU), and text conditions gathered from the pool equal to encoding the (dropped) captions."""

from __future__ import annotations

import pytest
import torch

from turbo.toyworld.models import ToyWorldSizes, build_pipeline, build_vae
from turbo.toyworld.train import (
    FlowTask,
    VAETask,
    _dropped_condition,
    _optimizer,
    _text_condition,
    train_pipeline,
    train_vae,
)
from turbo.training import GraphedStep, StepPlan, TensorLambdaLR, TrainConfig

TINY = ToyWorldSizes.tiny()
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def test_tensor_lr_schedule_matches_lambda_lr():
    factor = lambda s: min(1.0, (s + 1) / 4) * 0.5 ** (s // 6)  # noqa: E731
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    reference = torch.optim.SGD([p1], lr=0.3)
    tensor_lr = torch.optim.SGD([p2], lr=torch.tensor(0.3))
    a, b = torch.optim.lr_scheduler.LambdaLR(reference, factor), TensorLambdaLR(tensor_lr, factor)
    for _ in range(12):
        assert float(tensor_lr.param_groups[0]["lr"]) == pytest.approx(reference.param_groups[0]["lr"])
        reference.step(), tensor_lr.step()
        a.step(), b.step()


def test_graphed_step_without_cuda_is_eager_and_clears_gradients():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)

    def step(x):
        loss = (w * x).sum()
        loss.backward()
        opt.step()
        return loss

    graphed = GraphedStep(step, opt, enabled=not torch.cuda.is_available())
    for _ in range(3):
        graphed(torch.ones(3))
    assert torch.allclose(w.detach(), torch.full((3,), 0.7))  # each step saw a fresh gradient of 1, not a sum


@pytest.mark.parametrize("kind", ["wan-t2v", "hunyuan-t2v"])
def test_pooled_text_condition_is_the_encoded_caption_or_the_empty_prompt(kind):
    pipe = build_pipeline(kind, TINY, seed=0)
    enc = (kind, pipe.tokenizer, pipe.text_encoder, getattr(pipe, "tokenizer_2", None) or pipe.tokenizer,
           getattr(pipe, "text_encoder_2", None))
    max_len = 32
    captions = ["a red circle moving left on a gray background", "a blue square growing on a black background"]

    def encode(caps):
        k, tok, te, tok2, te2 = enc
        return _text_condition(k, caps, tok, te, tok2, te2, max_len, "cpu")

    got = _dropped_condition(encode(captions), encode([""]), torch.tensor([False, True]))
    want = encode([captions[0], ""])
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)


@cuda
def test_graphed_vae_training_matches_eager():
    losses = []
    for graphs in (False, True):
        vae = build_vae(TINY, seed=0)
        config = TrainConfig(steps=10, batch_size=2, seed=0, device="cuda", lr=1e-3, cuda_graphs=graphs,
                             show_progress=False)
        task = VAETask(frames=5, height=32, width=32, long_frames=9, long_every=2, calibrate=False, sample_scale=0.0,
                       fg_weight=10.0)
        losses.append(train_vae(vae, config, task))
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), atol=2e-3, rtol=2e-3)


@cuda
@pytest.mark.parametrize(("kind", "compile_model"), [("wan-t2v", False), ("hunyuan-t2v", False), ("wan-t2v", True)])
def test_graphed_transformer_training_matches_eager(kind, compile_model):
    losses, weights = [], []
    for graphs in (False, True):
        pipe = build_pipeline(kind, TINY, seed=0)
        config = TrainConfig(steps=10, batch_size=2, ema_decay=0.9, schedule="cosine", device="cuda",
                             cuda_graphs=graphs, compile=compile_model and graphs, show_progress=False)
        losses.append(train_pipeline(pipe, kind, config, FlowTask(frames=(5, 9), height=32, width=32, pool_size=4)))
        weights.append(torch.cat([p.detach().flatten() for p in pipe.transformer.parameters()]))
    # bf16 autocast: the two runs agree to rounding, and the graphed run really trained (weights moved alike)
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(weights[1], weights[0], atol=3e-3, rtol=3e-2)


def test_capturable_optimizer_is_only_built_when_asked():
    plan = StepPlan(5)
    _, opt, sched = _optimizer(torch.nn.Linear(2, 2), TrainConfig(steps=5, lr=0.1, warmup=0), plan)
    assert isinstance(sched, torch.optim.lr_scheduler.LambdaLR) and not opt.defaults.get("capturable")
