"""Offline tiny-pipeline builders (pipelines/tiny.py): every builder runs end to end on CPU without the model hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines import tiny  # noqa: E402

PROMPT = "a red circle moving left on a gray background"
NEGATIVE = "blurry, low quality"
SMALL = {"height": 64, "width": 64, "num_frames": 9}


def _image() -> Image.Image:
    x = np.linspace(0, 255, 64, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (64, 1)), np.tile(x[:, None], (1, 64)), np.full((64, 64), 128, np.uint8)], axis=-1)
    return Image.fromarray(rgb)


def _run(kind: str, pipe, *, seed: int = 0, prompt: str = PROMPT, steps: int = 2) -> np.ndarray:
    """Generate a small video with classifier-free guidance; returns frames (B, F, H, W, 3) in [0, 1]."""
    kwargs = dict(
        prompt=prompt,
        negative_prompt=NEGATIVE,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **SMALL,
    )
    if kind == "hunyuan":
        kwargs.update(tiny.HUNYUAN_CALL_KWARGS, true_cfg_scale=2.0)  # guidance_scale is embedded; CFG = true_cfg_scale
    else:
        kwargs.update(guidance_scale=5.0)
    if kind == "wan_i2v":
        kwargs.update(image=_image(), max_sequence_length=512)
    with torch.no_grad():
        return np.asarray(pipe(**kwargs).frames)


BUILDERS = {
    "wan_t2v": tiny.build_wan_t2v,
    "wan_i2v": tiny.build_wan_i2v,
    "wan22_t2v": tiny.build_wan22_t2v,
    "hunyuan": tiny.build_hunyuan_t2v,
}


@pytest.fixture(scope="module")
def pipes():
    return {kind: build() for kind, build in BUILDERS.items()}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_builder_runs_end_to_end(kind, pipes):
    frames = _run(kind, pipes[kind])
    assert frames.shape == (1, 9, 64, 64, 3)
    assert frames.dtype == np.float32
    assert np.isfinite(frames).all()
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    assert frames.std() > 0  # not a constant image


def test_pipeline_classes(pipes):
    import diffusers

    assert type(pipes["wan_t2v"]) is diffusers.WanPipeline
    assert type(pipes["wan22_t2v"]) is diffusers.WanPipeline
    assert type(pipes["wan_i2v"]) is diffusers.WanImageToVideoPipeline
    assert type(pipes["hunyuan"]) is diffusers.HunyuanVideoPipeline
    for pipe in pipes.values():
        assert all(p.dtype == torch.float32 for p in pipe.transformer.parameters())
    i2v = pipes["wan_i2v"].transformer.config
    assert i2v.in_channels == 36
    assert i2v.image_dim == pipes["wan_i2v"].image_encoder.config.hidden_size
    assert i2v.added_kv_proj_dim == i2v.num_attention_heads * i2v.attention_head_dim
    hy = pipes["hunyuan"].transformer.config
    assert sum(hy.rope_axes_dim) == hy.attention_head_dim
    assert hy.guidance_embeds
    assert pipes["hunyuan"].text_encoder.config.num_hidden_layers >= 3
    assert pipes["hunyuan"].text_encoder_2.config.max_position_embeddings >= 77
    assert pipes["hunyuan"].tokenizer.pad_token is not None


def test_wan22_switches_experts(pipes):
    pipe = pipes["wan22_t2v"]
    assert pipe.transformer_2 is not None
    assert pipe.config.boundary_ratio == 0.875
    w1 = pipe.transformer.blocks[0].attn1.to_q.weight
    w2 = pipe.transformer_2.blocks[0].attn1.to_q.weight
    assert w1.shape == w2.shape and not torch.equal(w1, w2)

    calls = {"transformer": 0, "transformer_2": 0}

    def counter(name):
        def hook(module, args, kwargs):
            calls[name] += 1

        return hook

    handles = [getattr(pipe, name).register_forward_pre_hook(counter(name), with_kwargs=True) for name in calls]
    try:
        _run("wan22_t2v", pipe)
    finally:
        for h in handles:
            h.remove()
    # 2 steps, CFG: step 0 (t=1000 >= 875) on the high-noise expert, step 1 on the low-noise expert, 2 calls each.
    assert calls == {"transformer": 2, "transformer_2": 2}


@pytest.mark.parametrize("kind", ["wan_t2v", "wan_i2v", "wan22_t2v", "hunyuan"])
def test_deterministic_for_seed(kind, pipes):
    again = BUILDERS[kind](seed=0)
    reference = pipes[kind].transformer.state_dict()
    for name, tensor in again.transformer.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    np.testing.assert_array_equal(_run(kind, pipes[kind]), _run(kind, again))
    other = BUILDERS[kind](seed=1)
    assert not torch.equal(next(iter(other.transformer.parameters())), next(iter(pipes[kind].transformer.parameters())))


@pytest.mark.parametrize("kind", ["wan_t2v", "wan22_t2v", "wan_i2v", "hunyuan"])
def test_save_and_reload_round_trip(kind, pipes, tmp_path):
    pipe = pipes[kind]
    reloaded = tiny.save_and_reload(pipe, tmp_path / kind)
    assert type(reloaded) is type(pipe)
    assert (tmp_path / kind / "model_index.json").exists()
    if kind == "wan22_t2v":
        assert reloaded.transformer_2 is not None and reloaded.config.boundary_ratio == 0.875
    np.testing.assert_array_equal(_run(kind, pipe), _run(kind, reloaded))


def test_save_and_reload_keeps_dtype(tmp_path):
    pipe = tiny.build_wan_t2v(dtype=torch.bfloat16)
    assert pipe.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert pipe.transformer.blocks[0].scale_shift_table.dtype == torch.float32  # _keep_in_fp32_modules
    assert pipe.vae.dtype == torch.float32
    reloaded = tiny.save_and_reload(pipe, tmp_path)
    assert reloaded.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert reloaded.text_encoder.dtype == torch.bfloat16
    assert reloaded.vae.dtype == torch.float32
    frames = _run("wan_t2v", reloaded, steps=1)
    assert np.isfinite(frames).all()


def test_wan_tokenizer():
    tok = tiny.wan_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok(PROMPT).input_ids
    assert ids[-1] == 1 and tok.unk_token_id not in ids
    assert len(ids) == len(PROMPT.split()) + 1  # one piece per caption word, plus </s>
    unknown = tok("a zebra xylophone").input_ids
    assert tok.unk_token_id in unknown
    padded = tok(PROMPT, padding="max_length", max_length=16).input_ids
    assert len(padded) == 16 and padded[-1] == 0


@pytest.mark.parametrize("kind", ["wan_t2v", "hunyuan"])
def test_unknown_words_do_not_crash(kind, pipes):
    frames = _run(kind, pipes[kind], prompt="a Zebra juggling quaternions, über-fast! 日本", steps=1)
    assert frames.shape == (1, 9, 64, 64, 3) and np.isfinite(frames).all()


def test_meta_transformer():
    small = tiny.meta_transformer("wan2.1-t2v-1.3b")
    n = sum(p.numel() for p in small.parameters())
    assert abs(n - 1.42e9) / 1.42e9 < 0.01
    assert len(small.blocks) == 30
    assert all(p.device.type == "meta" for p in small.parameters())
    assert small.config.num_attention_heads == 12 and small.config.attention_head_dim == 128
    assert small.config.ffn_dim == 8960 and small.config.text_dim == 4096

    hunyuan = tiny.meta_transformer("hunyuanvideo")
    n = sum(p.numel() for p in hunyuan.parameters())
    assert abs(n - 12.8e9) / 12.8e9 < 0.01
    assert len(hunyuan.transformer_blocks) == 20 and len(hunyuan.single_transformer_blocks) == 40

    i2v = tiny.meta_transformer("wan2.1-i2v-14b")
    assert i2v.config.in_channels == 36 and i2v.config.added_kv_proj_dim == 5120
    assert abs(sum(p.numel() for p in i2v.parameters()) - 16.39e9) / 16.39e9 < 0.01
    assert len(tiny.meta_transformer("wan2.1-t2v-14b").blocks) == 40

    with pytest.raises(ValueError, match="wan2.1-t2v-1.3b"):
        tiny.meta_transformer("wan9-unknown")


def test_default_model_demo():
    demo = tiny.DEFAULT_DEMO
    assert demo["height"] % 16 == 0 and demo["width"] % 16 == 0 and demo["num_frames"] % 4 == 1

    pipe = tiny.build_default()
    shapes = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["hidden_states"].shape)), with_kwargs=True
    )
    start = time.perf_counter()
    with torch.no_grad():
        frames = pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0), **demo).frames
    elapsed = time.perf_counter() - start
    handle.remove()

    frames_lat = (demo["num_frames"] - 1) // 4 + 1
    tokens = frames_lat * (demo["height"] // 16) * (demo["width"] // 16)
    assert tokens >= 1024
    # latents (B, C, F_lat, H/8, W/8), patch (1, 2, 2): the transformer really sees that many tokens
    _, _, f, h, w = shapes[0]
    assert (f, h, w) == (frames_lat, demo["height"] // 8, demo["width"] // 8)
    assert f * (h // 2) * (w // 2) == tokens
    n_calls = demo["num_inference_steps"] * (2 if demo["guidance_scale"] > 1 else 1)
    assert len(shapes) == n_calls
    assert frames.shape == (1, demo["num_frames"], demo["height"], demo["width"], 3)
    assert np.isfinite(frames).all()
    # the default is the trained ToyWorld model: the judge finds the prompted object (random weights give noise)
    from turbo.eval.judge import judge

    verdict = judge(frames[0], PROMPT)
    assert verdict.background_ok and verdict.objects[0].colour_ok and verdict.objects[0].motion_ok, verdict
    if elapsed >= 20.0 and os.getloadavg()[0] > (os.cpu_count() or 1) + 1:
        # Concurrent processes on this 2-core box slow torch's OpenMP threads by up to 10x (seen: 43 s instead of 4 s).
        pytest.skip(f"default demo took {elapsed:.1f} s on an overloaded machine (loadavg {os.getloadavg()[0]:.1f})")
    assert elapsed < 20.0, f"default demo took {elapsed:.1f} s"
