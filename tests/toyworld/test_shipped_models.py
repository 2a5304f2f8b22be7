"""The trained ToyWorld pipelines shipped in models/toyworld/: within the size budget, checksummed, with their recipes
and 200-prompt accuracy records, loadable offline, and they draw what a prompt asks for (random weights draw noise)."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.tiny import TOYWORLD_MODELS
from turbo.eval.harness import judge_prompts
from turbo.toyworld.models import sampling_kwargs
from turbo.toyworld.train import load_toyworld, verify_checksums

SHIPPED = {"wan-t2v": "WanPipeline", "wan-i2v": "WanImageToVideoPipeline", "hunyuan-t2v": "HunyuanVideoPipeline"}
PROMPT = ("a blue square moving right on a black background", 1)


def test_shipped_models_fit_the_budget_and_carry_their_records():
    total = sum(f.stat().st_size for name in SHIPPED for f in (TOYWORLD_MODELS / name).rglob("*") if f.is_file())
    assert total <= 40e6, f"models/toyworld pipelines take {total / 1e6:.1f} MB (budget 40 MB)"
    for name in SHIPPED:
        directory = TOYWORLD_MODELS / name
        verify_checksums(directory)
        recipe = json.loads((directory / "toyworld_recipe.json").read_text())
        assert recipe["steps_run"] > 0 and f"--steps {recipe['steps_run']}" in recipe["reproduce"]
        record = json.loads((TOYWORLD_MODELS / f"{name}-accuracy.json").read_text())[0]
        assert record["prompts"] == 200 and record["call_kwargs"]["num_inference_steps"] == 50
        assert set(record["accuracy"]) >= {"colour", "shape", "motion", "background"}


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_model_loads_offline_and_draws_the_prompt(name):
    pipe = load_toyworld(TOYWORLD_MODELS / name, dtype=torch.float32)
    assert type(pipe).__name__ == SHIPPED[name]
    kwargs = {"height": 256, "width": 256, "num_frames": 17, "num_inference_steps": 12, **sampling_kwargs(pipe, 5.0)}
    report = judge_prompts(pipe, [PROMPT], call_kwargs=kwargs, batch_size=1, progress=False)
    accuracy = report.accuracy()
    assert accuracy["colour"] == 1.0 and accuracy["background"] == 1.0, accuracy
