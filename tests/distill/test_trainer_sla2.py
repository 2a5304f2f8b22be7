"""SLA2 training on a tiny Wan (CPU): stage 1 trains only the router and α (everything else bit-for-bit the teacher's)
and lowers the attention-output error against dense attention; stage 2 starts from the stage-1 export's parts, trains
the whole model with hard top-k + QAT, and its export runs through from_pretrained + turbo.accelerate."""

from __future__ import annotations

import json

import pytest
import torch

from turbo.distill.config import DistillConfig, tiny_toyworld
from turbo.distill.trainer import distill
from turbo.errors import TurboConfigError

HEIGHT = WIDTH = 64
FRAMES = 9
STAGE1_STEPS = 15


@pytest.fixture(scope="module")
def stage1(pipe, cache, tmp_path_factory):
    config = tiny_toyworld(mode="sla2-stage1", steps=STAGE1_STEPS, lr=2e-2, save_every=100)
    return distill(pipe, config, cache, tmp_path_factory.mktemp("stage1"))


def _attention_error(model, cache) -> float:
    """Mean over layers of MSE(SLA2 output, dense) on the teacher's Q/K/V of a fixed probe (item 1, t = 0.5)."""
    from turbo.distill.trainer import _dense_reference, _sla2_modules
    from turbo.eval.capture import QKVCapture
    from turbo.runtime import AttentionCall

    item = cache[1]
    x0 = item["latents"].float()[None]
    x_t = 0.5 * x0 + 0.5 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    runtime = model.turbo.runtime
    capture, dense_steps = QKVCapture(), runtime.dense_steps
    runtime.capture, runtime.dense_steps = capture, 1 << 62
    try:
        with torch.no_grad():
            model(hidden_states=x_t, timestep=torch.tensor([500.0]), return_dict=False,
                  encoder_hidden_states=item["prompt_embeds"].float()[None])
    finally:
        runtime.capture, runtime.dense_steps = None, dense_steps
        runtime.reset()
    methods = _sla2_modules(model)
    errors = []
    with torch.no_grad():
        for c in capture:
            out = methods[c.layer](c.q, c.k, c.v, AttentionCall(c.geometry, c.num_video, _dense_reference))
            errors.append(float(((out - _dense_reference(c.q, c.k, c.v)) ** 2).mean()))
    assert len(errors) == len(methods) > 0
    return sum(errors) / len(errors)


def test_stage1_trains_only_the_sla2_parts_and_lowers_the_attention_error(stage1, pipe, cache):
    import copy

    import turbo
    from turbo.adapters import METHOD_ATTR

    teacher = pipe.transformer.state_dict()
    for name, value in stage1.student.state_dict().items():
        if f".{METHOD_ATTR}." not in name:
            assert torch.equal(value, teacher[name].float()), name  # frozen: bit-for-bit the teacher's
    trained = {n for n, p in stage1.student.named_parameters() if p.requires_grad}
    assert trained and all(f".{METHOD_ATTR}." in n for n in trained)
    assert {n.rsplit(".", 2)[-2] if n.endswith("weight") else n.rsplit(".", 1)[-1] for n in trained} == {
        "proj_q", "proj_k", "alpha_logit"}
    config = tiny_toyworld(mode="sla2-stage1")
    untrained = turbo.accelerate(copy.deepcopy(pipe.transformer).float(), {"attention": config.attention},
                                 allow_untuned=True)
    for name, value in untrained.state_dict().items():
        if f".{METHOD_ATTR}." in name:
            assert not torch.equal(value, stage1.student.state_dict()[name]), name  # every SLA2 part moved
    before, after = _attention_error(untrained, cache), _attention_error(stage1.student, cache)
    losses = [h["loss"] for h in stage1.history]
    print(f"SLA2 stage 1 attention MSE vs dense: {before:.3g} -> {after:.3g}; loss {losses[0]:.3g} -> {losses[-1]:.3g}")
    assert after < 0.9 * before, (before, after)
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    recipe = json.loads((stage1.export_dir / "turbo_config.json").read_text())
    assert recipe["attention"]["method"] == "sla2" and recipe["attention"]["soft_topk"] is True
    card = (stage1.export_dir / "README.md").read_text()
    assert "stage 1" in card and "captured" in card


def test_stage2_starts_from_the_stage1_parts_trains_and_exports(stage1, pipe, cache, tmp_path):
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    import turbo
    import turbo.distill.trainer as trainer
    from turbo.adapters import METHOD_ATTR

    exported = load_file(str(stage1.export_dir / "turbo_attention.safetensors"))
    holder = {}
    original = trainer._Run.__init__

    def grab(self, *args, **kwargs):
        original(self, *args, **kwargs)
        holder["start"] = {k: v.clone() for k, v in self.student_net.state_dict().items()}

    trainer._Run.__init__ = grab
    try:
        config = tiny_toyworld(mode="sla2-stage2", steps=3, save_every=100, init_from=str(stage1.export_dir))
        result = distill(pipe, config, cache, tmp_path)
    finally:
        trainer._Run.__init__ = original
    start = holder["start"]
    for name, value in exported.items():
        assert torch.equal(start[name], value), name  # loaded before training
    assert set(exported) == {k for k in start if f".{METHOD_ATTR}." in k}
    final = result.student.state_dict()
    assert not torch.equal(final["blocks.0.ffn.net.0.proj.weight"], start["blocks.0.ffn.net.0.proj.weight"])
    assert any(not torch.equal(final[k], start[k]) for k in exported)  # the whole model trains, α / router too
    assert all(h["kind"] == "student" and h["loss"] > 0 for h in result.history)
    assert "stage-1 parts" in (result.export_dir / "README.md").read_text()

    recipe = json.loads((result.export_dir / "turbo_config.json").read_text())
    assert recipe["attention"]["method"] == "sla2" and recipe["attention"]["quantized"] is True
    assert recipe["attention"]["soft_topk"] is False
    loaded = WanTransformer3DModel.from_pretrained(result.export_dir).float()
    turbo.accelerate(loaded)  # sla2 from the recipe, its parts found beside the weights: no allow_untuned needed
    attention = loaded.turbo.config.attention
    assert attention.method == "sla2" and attention.quantized and not attention.soft_topk and attention.keep == 0.25
    parts = load_file(str(result.export_dir / "turbo_attention.safetensors"))
    own = loaded.state_dict()
    assert all(torch.equal(own[k].float(), v) for k, v in parts.items())


def test_sla2_config_bad_input(caplog, pipe, cache, tmp_path):
    with pytest.raises(TurboConfigError) as info:
        DistillConfig(mode="sla3")
    message = str(info.value)
    assert "sla2-stage1" in message and "sla2-stage2" in message and "\n" not in message
    with pytest.raises(TurboConfigError, match="soft_topk"):
        DistillConfig(mode="sla2-stage1", attention={"method": "sla2", "keep": 0.1})
    with pytest.raises(TurboConfigError, match="init_from"):
        DistillConfig(mode="sla", init_from="x")
    assert DistillConfig(mode="sla2-stage2").attention["quantized"] is True
    with caplog.at_level("WARNING", logger="turbo"):
        result = distill(pipe, tiny_toyworld(mode="sla2-stage2", steps=1, save_every=100), cache, tmp_path,
                         export=False)
    assert "untrained SLA2 parts" in caplog.text and any("untrained" in n for n in result.notes)
    with pytest.raises(TurboConfigError, match="does not exist"):
        distill(pipe, tiny_toyworld(mode="sla2-stage2", steps=1, init_from=str(tmp_path / "nope")), cache,
                tmp_path / "other")
