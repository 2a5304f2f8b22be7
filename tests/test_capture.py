import torch

import turbo
from turbo.config import AttentionConfig
from turbo.eval.capture import attention_fidelity, capture_qkv

from .pipes import build, run


def test_capture_selected_layers_steps_branches_and_restore():
    pipe = build("wan-t2v")
    baseline = run(pipe, "wan-t2v")
    with capture_qkv(pipe, layers=[1], steps=[0, 1], branches=["cond"]) as captured:
        out = run(pipe, "wan-t2v")
    assert not hasattr(pipe, "turbo")  # temporary dense acceleration was undone
    assert (out == baseline).all()  # capturing does not change the video
    assert [(c.layer, c.step, c.branch) for c in captured] == [(1, 0, "cond"), (1, 1, "cond")]
    item = captured.items[0]
    assert item.q.shape == item.k.shape == item.v.shape and item.q.shape[1] == item.geometry.num_tokens


def test_capture_on_an_accelerated_hunyuan_pipeline_keeps_text_and_mask():
    pipe = build("hunyuan-t2v")
    turbo.accelerate(pipe, attention="sla", block_q=16, block_k=16, allow_untuned=True)
    try:
        with capture_qkv(pipe, layers=[0]) as captured:
            run(pipe, "hunyuan-t2v")
        assert hasattr(pipe, "turbo")
    finally:
        turbo.restore(pipe)
    item = captured.items[0]
    assert item.num_video < item.q.shape[1] and item.attn_mask is not None


def test_attention_fidelity_dense_is_exact_and_sparse_is_not():
    pipe = build("hunyuan-t2v")
    with capture_qkv(pipe, steps=[0]) as captured:
        run(pipe, "hunyuan-t2v")
    dense = attention_fidelity(captured, AttentionConfig(method="dense"))
    assert all(r["rel_l1"] < 1e-6 and r["cosine"] > 0.99999 for r in dense)
    full = attention_fidelity(captured, AttentionConfig(method="sla", keep=1.0, block_q=16, block_k=16))
    assert all(r["rel_l1"] < 1e-4 for r in full)
    sparse = attention_fidelity(captured, AttentionConfig(method="sla", keep=0.2, block_q=16, block_k=16))
    assert any(r["rel_l1"] > 1e-3 for r in sparse) and all(torch.isfinite(torch.tensor(r["rel_l1"])) for r in sparse)


def test_attention_fidelity_with_trained_parts_from_a_parts_file(tmp_path):
    """`layer_parts` reads a saved parts file per layer with its config; `attention_fidelity(parts=...)` runs those
    parts: the saved initial parts reproduce the untrained numbers, a changed proj changes them."""
    from turbo.attention.parts import save_attention_parts
    from turbo.eval.capture import layer_parts

    pipe = build("wan-t2v")
    with capture_qkv(pipe, steps=[0], branches=["cond"]) as captured:
        run(pipe, "wan-t2v")
    turbo.accelerate(pipe, attention="sla", keep=0.25, block_q=16, block_k=16, allow_untuned=True)
    (path,) = save_attention_parts(pipe, tmp_path)
    turbo.restore(pipe)
    config, parts = layer_parts(path)
    assert config.method == "sla" and config.keep == 0.25 and sorted(parts) == sorted({c.layer for c in captured})
    untrained = attention_fidelity(captured, config)
    same = attention_fidelity(captured, config, parts=parts)
    assert [r["rel_l1"] for r in same] == [r["rel_l1"] for r in untrained]
    for state in parts.values():
        state["proj.weight"] = torch.eye(*state["proj.weight"].shape)
    changed = attention_fidelity(captured, config, parts=parts)
    assert all(a["rel_l1"] != b["rel_l1"] for a, b in zip(changed, untrained, strict=True))
