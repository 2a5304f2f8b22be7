"""benchmarks/distill_step.py --smoke: every variant's code path on the CPU with a tiny Wan (the real-size run needs a
GPU); the JVP-kernel routing the GPU run relies on is checked without running the kernel."""

import math

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")


def test_distill_step_smoke(tmp_path, capsys):
    import json

    from benchmarks import distill_step

    out = tmp_path / "distill_step.json"
    results = distill_step.main(["--smoke", "--out", str(out)])
    rows = results["rows"]
    assert set(rows) == {"jvp-attention", "sla-step", "dense-step", "rcm-step-gc", "rcm-step"}
    assert rows["jvp-attention"]["status"] == distill_step.SKIP_CUDA
    for name in ("sla-step", "dense-step", "rcm-step-gc", "rcm-step"):
        row = rows[name]
        assert row["status"] == "ok", row
        for key in ("s_per_step", "first_step_s", "loss"):
            assert math.isfinite(row[key]) and row[key] >= 0, (name, key, row[key])
    for name in ("rcm-step-gc", "rcm-step"):
        row = rows[name]
        assert all(math.isfinite(row[k]) for k in ("loss_scm", "loss_dmd", "fake_step_s", "loss_fake"))
        assert row["sim_steps"] and row["jvp"] == "reference"
    assert rows["rcm-step-gc"]["gradient_checkpointing"] and not rows["rcm-step"]["gradient_checkpointing"]
    assert rows["sla-step"]["attention"].startswith("sla") and rows["dense-step"]["attention"] == "dense"
    printed = capsys.readouterr().out
    for name in rows:
        assert f"| {name} |" in printed
    assert json.loads(out.read_text())["rows"].keys() == rows.keys()


def test_trainer_jvp_attention_choice():
    """DistillConfig.jvp_attention: "kernel" puts the Triton kernel's kernel_jvp_fn on every JVP processor, "auto" on a
    CPU model and "reference" the chunked PyTorch reference; the processors are gone afterwards."""
    import pytest
    import torch

    from pipelines.tiny import _wan_transformer
    from turbo.distill import trainer
    from turbo.distill.config import DistillConfig
    from turbo.distill.jvp_attention import JVPWanAttnProcessor
    from turbo.distill.kernels.jvp_attention import kernel_jvp_fn
    from turbo.errors import TurboConfigError

    model = _wan_transformer(num_layers=1, num_heads=2, head_dim=16, text_dim=32, seed=0).to(torch.float32)
    for choice, expected in (("kernel", kernel_jvp_fn), ("auto", None), ("reference", None)):
        with trainer._dense_attention_for_jvp(model, choice):
            procs = list(model.attn_processors.values())
            assert procs and all(isinstance(p, JVPWanAttnProcessor) and p.jvp_fn is expected for p in procs)
        assert not any(isinstance(p, JVPWanAttnProcessor) for p in model.attn_processors.values())
    with pytest.raises(TurboConfigError, match="jvp_attention"):
        DistillConfig(jvp_attention="triton")
