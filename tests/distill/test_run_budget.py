"""`minutes` (a wall-time budget that stops, checkpoints and exports like `steps`) and `--set KEY=VALUE` overrides of
the distillation command."""

from __future__ import annotations

import json

import pytest

from turbo.distill.__main__ import parse_overrides
from turbo.distill.config import DistillConfig, tiny_toyworld
from turbo.distill.trainer import distill
from turbo.errors import TurboConfigError


def test_minutes_budget_stops_at_a_step_boundary_and_exports(pipe, cache, tmp_path):
    config = tiny_toyworld(mode="rcm", steps=1000, minutes=1e-6, save_every=0)
    result = distill(pipe, config, cache, tmp_path / "run")
    assert result.steps_done == 1 and not result.interrupted
    assert result.checkpoint is not None and (tmp_path / "run" / "student" / "config.json").is_file()
    card = (tmp_path / "run" / "student" / "README.md").read_text()
    assert "steps: 1 " in card


def test_minutes_is_a_runtime_key_and_refuses_negatives():
    a, b = tiny_toyworld(minutes=0.0), tiny_toyworld(minutes=5.0)
    assert "minutes" in a.diff(b)
    from turbo.distill.config import RUNTIME_KEYS

    assert "minutes" in RUNTIME_KEYS
    with pytest.raises(TurboConfigError, match="minutes"):
        tiny_toyworld(minutes=-1.0)


def test_overrides_are_yaml_values_on_top_of_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mode: rcm\nlr: 1e-4\nsteps: 10\nmixed_precision: \"no\"\n")
    got = parse_overrides(["lr=3e-5", "steps=20", "mixed_precision=no", "mode=rcm+sla",
                           "attention={method: sla, keep: 0.1, linear: all, topk_rule: floor}"])
    assert got["steps"] == 20 and got["mixed_precision"] == "no"
    config = DistillConfig.load(path, got)  # "3e-5" (YAML 1.1 reads it as a string) becomes a number
    assert (config.mode, config.lr, config.steps, config.attention["keep"]) == ("rcm+sla", 3e-5, 20, 0.1)
    assert DistillConfig.load(path).lr == 1e-4  # the file alone is unchanged


@pytest.mark.parametrize("item", ["lr", "=3", "lr=[1,"])
def test_bad_override_is_one_sentence(item):
    with pytest.raises(TurboConfigError, match="--set"):
        parse_overrides([item])


def test_command_line_set_reaches_the_run(pipe, cache, tmp_path, monkeypatch):
    """`python -m turbo.distill --set` on a saved tiny teacher: the override is in the exported card's config."""
    from turbo.distill.__main__ import main

    teacher = tmp_path / "teacher"
    pipe.save_pretrained(teacher)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**tiny_toyworld().to_dict(), "teacher": str(teacher),
                                  "data": str(cache.directory)}))
    assert main(["--config", str(config), "--out", str(tmp_path / "run"), "--set", "steps=2",
                 "--set", "lr=5e-4"]) == 0
    card = (tmp_path / "run" / "student" / "README.md").read_text()
    assert '"lr": 0.0005' in card and "steps: 2 " in card
