"""`turbo convert`: native Wan / TurboDiffusion checkpoints → diffusers WanTransformer3DModel + turbo parts + recipe.

Tiny diffusers transformers with random weights are written in the native layout (an inverse mapping kept here),
converted back and compared output for output; INT8 tiles are checked against the closed form; bad files must give
one sentence."""

from __future__ import annotations

import json
import math

import pytest
import torch

import turbo
from turbo.convert import convert_checkpoint, convert_report, dequantize_int8, native_to_diffusers
from turbo.errors import TurboError

_TO_NATIVE = [  # diffusers name piece → native name piece, applied in order
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    (".attn1.", ".self_attn."), (".attn2.", ".cross_attn."),
    (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."), (".to_out.0.", ".o."),
    (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."), (".norm_added_k.", ".norm_k_img."),
    (".norm2.", ".norm3."), (".ffn.net.0.proj.", ".ffn.0."), (".ffn.net.2.", ".ffn.2."),
    (".scale_shift_table", ".modulation"),
]


def tiny_model(heads=2, head_dim=32, layers=2, in_channels=16, ffn=96, text_dim=48, image_dim=None, seed=0,
               freq_dim=32):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_channels,
        out_channels=16, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=image_dim,
        added_kv_proj_dim=heads * head_dim if image_dim else None, rope_max_seq_len=1024).eval()
    with torch.no_grad():  # stock init leaves norms at 1 and biases at 0: make every tensor count
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def to_native(model, linear_patch=True) -> dict[str, torch.Tensor]:
    """The model's weights under native Wan names (patch embedding in rcm's Linear form when linear_patch)."""
    native = {}
    for key, value in model.state_dict().items():
        name = key
        if key == "scale_shift_table":
            name = "head.modulation"
        elif key.startswith("proj_out."):
            name = "head.head." + key[len("proj_out."):]
        else:
            for old, new in _TO_NATIVE:
                name = name.replace(old, new)
        if key == "patch_embedding.weight" and linear_patch:
            value = value.flatten(1)
        native[name] = value.clone()
    return native


def add_proj_l(native, layers, head_dim, seed=1):
    torch.manual_seed(seed)
    proj = {}
    for i in range(layers):
        weight, bias = torch.randn(head_dim, head_dim), torch.randn(head_dim)
        native[f"blocks.{i}.self_attn.attn_op.local_attn.proj_l.weight"] = weight
        native[f"blocks.{i}.self_attn.attn_op.local_attn.proj_l.bias"] = bias
        proj[i] = (weight, bias)
    return proj


def quantize_int8(weight: torch.Tensor):
    """TurboDiffusion's tile quantisation (scale = amax/128 per 128×128 tile), written independently here."""
    n, k = weight.shape
    scale = torch.zeros(math.ceil(n / 128), math.ceil(k / 128))
    q = torch.zeros(n, k, dtype=torch.int8)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            tile = weight[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128].float()
            amax = tile.abs().max().clamp_min(1e-8)
            scale[i, j] = amax / 128
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (tile * 128 / amax).round().clamp(-128, 127)
    return q, scale


def inputs(model, in_channels=16, image_dim=None, seed=3):
    torch.manual_seed(seed)
    kwargs = {"hidden_states": torch.randn(1, in_channels, 2, 8, 8), "timestep": torch.tensor([500.0]),
              "encoder_hidden_states": torch.randn(1, 7, model.config.text_dim), "return_dict": False}
    if image_dim:
        kwargs["encoder_hidden_states_image"] = torch.randn(1, 5, image_dim)
    return kwargs


def load(directory):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(str(directory), torch_dtype=torch.float32).eval()


def assert_same_output(a, b, **kwargs):
    with torch.no_grad():
        torch.testing.assert_close(a(**kwargs)[0], b(**kwargs)[0], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------- INT8

def test_dequantize_matches_closed_form_with_ragged_and_zero_tiles():
    torch.manual_seed(0)
    n, k = 200, 300  # last row tile 72 rows, last column tile 44 columns
    weight = torch.randn(n, k)
    weight[:128, 128:256] = 0  # a zero tile
    q, scale = quantize_int8(weight)
    out = dequantize_int8(q, scale, torch.float32)
    assert out.shape == (n, k) and out.dtype == torch.float32
    for r in range(n):
        for c in (0, 127, 128, 255, 256, 299):
            assert out[r, c].item() == pytest.approx(q[r, c].item() * scale[r // 128, c // 128].item(), rel=1e-6)
    assert torch.all(out[:128, 128:256] == 0)
    tile_max = weight[128:, 256:].abs().max()
    assert (out - weight).abs().max() <= tile_max / 128 + 1e-6 or (out - weight).abs().max() < 0.05
    assert dequantize_int8(q, scale).dtype == torch.bfloat16
    with pytest.raises(TurboError, match=r"scale has shape \(2, 2\)"):
        dequantize_int8(q, scale[:, :2])


# ------------------------------------------------------------------------------------------------------ round trips

def test_t2v_sla_round_trip_parts_and_recipe(tmp_path):
    model = tiny_model()
    native = to_native(model)
    proj = add_proj_l(native, 2, 32)
    path = tmp_path / "turbo-1.3b-like.pth"
    torch.save({"state_dict": {f"net.{k}": v for k, v in native.items()}}, path)
    report = convert_report(path, tmp_path / "out", dtype=torch.float32, heads=2)
    assert report.models[0].sla and report.models[0].int8_linears == 0
    out = tmp_path / "out"
    assert {"config.json", "turbo_attention.safetensors", "turbo_config.json"} <= {p.name for p in out.iterdir()}
    converted = load(out)
    assert_same_output(model, converted, **inputs(model))

    recipe = json.loads((out / "turbo_config.json").read_text())
    wanted = {"method": "sla", "keep": 0.1, "block_q": 128, "block_k": 64, "linear": "all", "topk_rule": "floor"}
    assert {k: recipe["attention"][k] for k in wanted} == wanted
    assert recipe["sampler"]["mode"] == "rcm" and recipe["sampler"]["steps"] == 4
    assert recipe["sampler"]["sigma_max"] == 80.0

    from safetensors import safe_open

    from turbo.attention.parts import CONFIG_KEY, METHOD_KEY
    with safe_open(str(out / "turbo_attention.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert meta[METHOD_KEY] == "sla" and json.loads(meta[CONFIG_KEY])["keep"] == 0.1

    # a bare transformer has no scheduler for the rCM sampler: the recipe's attention with the sampler overridden
    turbo.accelerate(converted, sampler="default")
    assert converted.turbo.config.attention.method == "sla" and converted.turbo.config.attention.keep == 0.1
    for i, (weight, bias) in proj.items():
        module = converted.get_submodule(f"blocks.{i}.attn1.turbo_attention")
        assert torch.equal(module.proj.weight, weight) and torch.equal(module.proj.bias, bias)
    turbo.restore(converted)


def test_14b_like_safetensors_conv_patch_bf16_dense_recipe(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model(heads=4, head_dim=16, layers=3, ffn=160, text_dim=40, seed=5)
    native = to_native(model, linear_patch=False)  # teacher files keep the Conv3d shape
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in native.items()},
              str(tmp_path / "w.safetensors"))
    out = convert_checkpoint(tmp_path / "w.safetensors", tmp_path / "out", heads=4)
    config = json.loads((out / "config.json").read_text())
    assert (config["num_attention_heads"], config["attention_head_dim"], config["num_layers"], config["ffn_dim"],
            config["text_dim"], config["freq_dim"]) == (4, 16, 3, 160, 40, 32)
    assert not (out / "turbo_attention.safetensors").exists()
    recipe = json.loads((out / "turbo_config.json").read_text())
    assert recipe["attention"]["method"] == "dense" and recipe["sampler"]["mode"] == "rcm"
    converted = load(out)
    from safetensors import safe_open
    with safe_open(str(out / "diffusion_pytorch_model.safetensors"), "pt") as handle:
        assert all(handle.get_tensor(k).dtype == torch.bfloat16 for k in handle.keys())
    expected = {k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()}
    got = converted.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_int8_checkpoint_dequantised(tmp_path):
    model = tiny_model(heads=2, head_dim=80, layers=2, ffn=200, seed=7)  # 160×200: ragged 128-tiles
    native = to_native(model)
    add_proj_l(native, 2, 80)
    expected = {}
    for key in [k for k in native if k.startswith("blocks.") and k.endswith(".weight") and native[k].dim() == 2
                and "proj_l" not in k]:
        name = key[: -len(".weight")]
        q, scale = quantize_int8(native.pop(key))
        native[f"{name}.int8_weight"], native[f"{name}.scale"] = q, scale
        tiles = scale.repeat_interleave(128, 0)[:q.shape[0]].repeat_interleave(128, 1)[:, :q.shape[1]]
        expected[name] = q.float() * tiles
    torch.save(native, tmp_path / "quant.pth")
    report = convert_report(tmp_path / "quant.pth", tmp_path / "out", dtype=torch.float32, heads=2)
    assert report.models[0].int8_linears == len(expected) == 2 * 10
    converted = load(tmp_path / "out")
    sd = to_native(converted)
    for name, weight in expected.items():
        torch.testing.assert_close(sd[f"{name}.weight"], weight, rtol=1e-6, atol=0)
    assert not any("int8" in k or k.endswith(".scale") for k in converted.state_dict())


def test_wan21_i2v_image_embedder(tmp_path):
    model = tiny_model(in_channels=36, image_dim=24, seed=9)
    torch.save(to_native(model), tmp_path / "i2v.pt")
    report = convert_report(tmp_path / "i2v.pt", tmp_path / "out", dtype=torch.float32, heads=2)
    config = report.models[0].config
    assert config["image_dim"] == 24 and config["added_kv_proj_dim"] == 64 and config["in_channels"] == 36
    assert report.models[0].recipe["sampler"]["sigma_max"] == 200.0
    assert_same_output(model, load(tmp_path / "out"), **inputs(model, 36, 24))


def test_two_experts_and_sharded_directory(tmp_path):
    from safetensors.torch import save_file

    high, low = tiny_model(in_channels=36, seed=11), tiny_model(in_channels=36, seed=12)
    torch.save(to_native(high), tmp_path / "high.pth")
    shards = tmp_path / "low"
    shards.mkdir()
    native = to_native(low)
    keys = sorted(native)
    weight_map = {k: f"part-{i % 2}.safetensors" for i, k in enumerate(keys)}
    for part in ("part-0.safetensors", "part-1.safetensors"):
        save_file({k: native[k].contiguous() for k in keys if weight_map[k] == part}, str(shards / part))
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    out = convert_checkpoint(tmp_path / "high.pth", tmp_path / "out", low_noise=shards, dtype=torch.float32,
                             heads=2, sigma_max=150, sla_topk=0.2)
    for name, source in (("transformer", high), ("transformer_2", low)):
        assert (out / name / "turbo_config.json").is_file()
        assert json.loads((out / name / "turbo_config.json").read_text())["sampler"]["sigma_max"] == 150.0
        assert_same_output(source, load(out / name), **inputs(source, 36))


def test_recipe_and_parts_used_by_a_pipeline(tmp_path):
    from tests import pipes

    pipe = pipes.build("wan-t2v")  # tiny WanPipeline: 2 heads of 12, text dim 32, freq dim 256
    model = tiny_model(heads=2, head_dim=12, layers=2, ffn=48, text_dim=32, freq_dim=256, seed=13)
    native = to_native(model)
    proj = add_proj_l(native, 2, 12)
    torch.save(native, tmp_path / "ckpt.pth")
    convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "out", dtype=torch.float32, heads=2)
    pipe.transformer = load(tmp_path / "out")
    turbo.accelerate(pipe)
    assert pipe.turbo.config.sampler.mode == "rcm" and pipe.turbo.config.sampler.steps == 4
    assert pipe.turbo.config.attention.method == "sla"
    for i, (weight, _) in proj.items():
        assert torch.equal(pipe.transformer.get_submodule(f"blocks.{i}.attn1.turbo_attention").proj.weight, weight)
    frames = pipes.run(pipe, "wan-t2v", num_inference_steps=4, guidance_scale=1.0)
    assert frames.shape[0] == 9 and bool((frames == frames).all())
    turbo.restore(pipe)


def test_native_name_inverts_diffusers_renamer():
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    from turbo.convert.native_wan import native_name

    keys = list(tiny_model(in_channels=36, image_dim=24).state_dict())
    assert [next(iter(convert_wan_transformer_to_diffusers({native_name(k): 0}))) for k in keys] == keys


def test_state_dict_api_returns_config_and_proj(tmp_path):
    model = tiny_model(layers=1)
    native = to_native(model)
    add_proj_l(native, 1, 32)
    state, config, proj = native_to_diffusers(native, heads=2)
    assert set(state) == set(model.state_dict()) and config["num_layers"] == 1 and set(proj) == {0}
    assert state["patch_embedding.weight"].shape == (64, 16, 1, 2, 2) and proj[0][0].dtype == torch.float32


# ------------------------------------------------------------------------------------------------- bad checkpoints

class NeedsCode:
    def __init__(self):
        self.weight = torch.zeros(2)


def _one_sentence(error: TurboError, *words):
    text = str(error)
    assert "\n" not in text and text.endswith(".")
    for word in words:
        assert word in text, text


@pytest.mark.parametrize("case", ["unknown", "shape", "missing", "code", "empty", "text", "no-tensors"])
def test_bad_checkpoints_one_sentence(tmp_path, case):
    path = tmp_path / f"{case}.pth"
    words = []
    if case in ("unknown", "shape", "missing"):
        native = to_native(tiny_model(layers=1))
        if case == "unknown":
            native["blocks.0.self_attn.extra.weight"] = torch.zeros(3)
            words = ["blocks.0.self_attn.extra.weight", "1 key"]
        elif case == "shape":
            native["blocks.0.ffn.2.bias"] = torch.zeros(7)
            words = ["blocks.0.ffn.2.bias", "[7]", "[64]"]
        else:
            del native["blocks.0.cross_attn.o.bias"]
            words = ["blocks.0.cross_attn.o.bias"]
        torch.save(native, path)
    elif case == "code":
        torch.save({"weights": NeedsCode()}, path)
        words = ["weights only", path.name]
    elif case == "empty":
        path.write_bytes(b"")
        words = ["empty"]
    elif case == "text":
        path.write_text("not a checkpoint\n")
        words = [path.name]
    else:
        torch.save({"step": 3}, path)
        words = ["no"]
    with pytest.raises(TurboError) as info:
        convert_checkpoint(path, tmp_path / "out", heads=2)
    _one_sentence(info.value, *words)


# ---------------------------------------------------------------------------------------------------------------- CLI

def test_cli_missing_file_exits_2(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["convert", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("turbo:") and "nope.pth" in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_bad_option_exits_2(tmp_path, capsys):
    from pipelines.cli import main

    path = tmp_path / "x.pth"
    torch.save({}, path)
    assert main(["convert", str(path), "--out", str(tmp_path / "out"), "--sla-topk", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("turbo:")


def test_cli_converts_and_prints(tmp_path, capsys):
    from pipelines.cli import main

    model = tiny_model(heads=2, head_dim=128, layers=1, ffn=64)  # width 256: heads inferred as 256 / 128
    native = to_native(model)
    add_proj_l(native, 1, 128)
    torch.save(native, tmp_path / "ckpt.pth")
    assert main(["convert", str(tmp_path / "ckpt.pth"), "--out", str(tmp_path / "out"), "--dtype", "fp32"]) == 0
    text = capsys.readouterr().out
    assert "1 blocks, dim 256" in text and "SLA" in text and "turbo.accelerate" in text
    assert f"turbo generate --model <the base Wan *-Diffusers repo> --transformer {tmp_path / 'out'}" in text
    assert_same_output(model, load(tmp_path / "out"), **inputs(model))


def test_cli_generate_with_a_converted_transformer_runs_its_recipe(tmp_path, capsys):
    from pipelines.cli import main
    from tests import pipes

    pipes.build("wan-t2v").save_pretrained(tmp_path / "base")
    model = tiny_model(heads=2, head_dim=12, layers=2, ffn=48, text_dim=32, freq_dim=256, seed=13)
    native = to_native(model)
    add_proj_l(native, 2, 12)
    torch.save(native, tmp_path / "ckpt.pth")
    convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "out", dtype=torch.float32, heads=2)
    out = tmp_path / "video.mp4"
    code = main(["generate", "--model", str(tmp_path / "base"), "--transformer", str(tmp_path / "out"),
                 "--prompt", "a red circle", "--height", "32", "--width", "32", "--frames", "5", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "turbo_config.json" in printed and "4 steps" in printed and "guidance 1" in printed
    assert "rcm" in printed.lower()


def test_cli_generate_refuses_a_transformer_dir_without_weights(tmp_path, capsys):
    from pipelines.cli import main

    (tmp_path / "empty").mkdir()
    code = main(["generate", "--transformer", str(tmp_path / "empty"), "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("turbo:") and "turbo convert" in err[0]
