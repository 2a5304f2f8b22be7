"""The distillation trainer on a tiny HunyuanVideo T2V teacher (true CFG, no guidance embedding, as the ToyWorld
HunyuanVideo): an rCM run through the HunyuanVideo JVP processors, its export generating with the rCM sampler through
`HunyuanVideoPipeline` + `turbo.accelerate`, and the modes and teachers it refuses."""

from __future__ import annotations

import json

import pytest
import torch

from turbo.distill.config import tiny_toyworld
from turbo.distill.trainer import distill
from turbo.errors import UnsupportedModelError


def test_rcm_on_a_hunyuanvideo_teacher_trains_and_exports_a_student_that_samples(hunyuan, hunyuan_cache, tmp_path):
    from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    import turbo
    from pipelines.tiny import HUNYUAN_CALL_KWARGS

    item = hunyuan_cache[0]
    assert {"pooled_prompt_embeds", "prompt_attention_mask"} <= set(item)
    config = tiny_toyworld(mode="rcm", steps=4, tangent_warmup=2, save_every=100, sample_every=4, lr=1e-3)
    result = distill(hunyuan, config, hunyuan_cache, tmp_path)
    assert [h["kind"] for h in result.history] == ["student", "student", "student", "fake"]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert (tmp_path / "samples" / "step-00000004.mp4").stat().st_size > 0
    assert not torch.equal(result.student.proj_out.weight, hunyuan.transformer.proj_out.weight.float())
    recipe = json.loads((result.export_dir / "turbo_config.json").read_text())
    assert recipe["sampler"]["mode"] == "rcm"
    student = HunyuanVideoTransformer3DModel.from_pretrained(result.export_dir).float()
    pipe = HunyuanVideoPipeline(**{**hunyuan.components, "transformer": student})
    pipe.set_progress_bar_config(disable=True)
    turbo.accelerate(pipe)
    frames = pipe("a red circle moving left on a gray background", height=64, width=64, num_frames=9,
                  num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0),
                  **HUNYUAN_CALL_KWARGS).frames[0]
    assert frames.shape == (9, 64, 64, 3) and frames.std() > 0


def test_hunyuanvideo_refusals(hunyuan, hunyuan_cache, tmp_path):
    from pipelines import tiny

    with pytest.raises(UnsupportedModelError, match="fine-tunes Wan teachers for now") as info:
        distill(hunyuan, tiny_toyworld(mode="sla", steps=1), hunyuan_cache, tmp_path / "sla")
    assert "\n" not in str(info.value)
    with pytest.raises(UnsupportedModelError, match="guidance-embedded HunyuanVideo"):
        distill(tiny.build_hunyuan_t2v(), tiny_toyworld(), hunyuan_cache, tmp_path / "embedded")
