"""Evaluation metrics (PSNR, SSIM, flicker), the reference-vs-candidate harness and `turbo eval`."""

import json
import math

import cv2
import numpy as np
import pytest
import torch

from pipelines.tiny import build_wan_i2v
from turbo.eval.harness import EvalTable, describe_config, evaluate, prompt_set
from turbo.eval.metrics import psnr, ssim, temporal_flicker
from turbo.toyworld.videos import parse_caption

TINY = {"height": 64, "width": 64, "num_frames": 9, "num_inference_steps": 2}
SLA = {"attention": {"method": "sla", "keep": 0.25, "block_q": 16, "block_k": 16}}


def _video(seed=0, shape=(3, 32, 40, 3), lo=0.2, hi=0.8):
    return np.random.default_rng(seed).uniform(lo, hi, shape)


# ------------------------------------------------------------------------------------------------------------ metrics


def test_identical_videos_give_inf_psnr_and_ssim_one():
    a = _video()
    assert psnr(a, a.copy()) == math.inf
    assert ssim(a, a.copy()) == 1.0
    assert ssim(a, a.copy(), channels="rgb") == 1.0
    t = torch.from_numpy(a).float()
    assert psnr(t, t.clone()) == math.inf and ssim(t, t.clone()) == 1.0


@pytest.mark.parametrize("offset", [0.1, 0.05, -0.02])
def test_constant_offset_psnr_is_closed_form(offset):
    a = _video()
    assert psnr(a + offset, a) == pytest.approx(-20 * math.log10(abs(offset)), abs=1e-9)


def test_psnr_accepts_torch_and_uint8_like_numpy():
    a, b = _video(0), _video(1)
    assert psnr(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(psnr(a, b))
    a8 = (a * 255).round().astype(np.uint8)
    assert psnr(a8, a8.astype(np.float64) / 255) == math.inf


def test_ssim_of_constant_frames_is_the_luminance_term():
    a, b = np.full((2, 16, 16, 3), 0.5), np.full((2, 16, 16, 3), 0.6)
    c1 = 0.01**2
    assert ssim(a, b) == pytest.approx((2 * 0.5 * 0.6 + c1) / (0.5**2 + 0.6**2 + c1), abs=1e-12)


def _ssim_opencv(x, y):
    """Independent SSIM of two 2-D images: OpenCV 11x11 Gaussian (sigma 1.5), border-free region only."""
    blur = lambda z: cv2.GaussianBlur(z, (11, 11), 1.5)[5:-5, 5:-5]
    m1, m2 = blur(x), blur(y)
    s1, s2, s12 = blur(x * x) - m1**2, blur(y * y) - m2**2, blur(x * y) - m1 * m2
    c1, c2 = 0.01**2, 0.03**2
    return float((((2 * m1 * m2 + c1) * (2 * s12 + c2)) / ((m1**2 + m2**2 + c1) * (s1 + s2 + c2))).mean())


def test_ssim_is_symmetric_below_one_for_noise_and_matches_an_independent_implementation():
    a = _video()
    b = np.clip(a + np.random.default_rng(1).normal(0, 0.05, a.shape), 0, 1)
    value = ssim(a, b)
    assert value == ssim(b, a)
    assert 0.5 < value < 1.0
    w = np.array([0.299, 0.587, 0.114])
    assert value == pytest.approx(np.mean([_ssim_opencv(x @ w, y @ w) for x, y in zip(a, b, strict=True)]), abs=1e-9)
    rgb = np.mean([_ssim_opencv(x[..., c], y[..., c]) for x, y in zip(a, b, strict=True) for c in range(3)])
    assert ssim(a, b, channels="rgb") == pytest.approx(rgb, abs=1e-9)
    worse = np.clip(a + np.random.default_rng(1).normal(0, 0.2, a.shape), 0, 1)
    assert ssim(a, worse) < value


def test_ssim_small_frames_and_bad_shapes():
    a = _video(shape=(2, 8, 8, 3))
    assert 0 < ssim(a, _video(1, shape=(2, 8, 8, 3))) < 1
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, _video(shape=(2, 8, 9, 3)))
    with pytest.raises(ValueError, match="3 colour channels"):
        ssim(np.zeros((2, 8, 8, 4)), np.zeros((2, 8, 8, 4)))


def test_temporal_flicker():
    static = np.repeat(_video(shape=(1, 8, 8, 3)), 5, axis=0)
    assert temporal_flicker(static) == 0.0
    assert temporal_flicker(static[:1]) == 0.0
    ramp = np.stack([np.full((8, 8, 3), 0.1 * t) for t in range(6)])  # gray: luma = value
    assert temporal_flicker(ramp) == pytest.approx(0.1)
    blink = np.stack([np.full((8, 8, 3), float(t % 2)) for t in range(5)])
    assert temporal_flicker(blink) == pytest.approx(1.0)
    assert temporal_flicker(torch.from_numpy(ramp)) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------------------------ harness


def test_prompt_set_is_deterministic_toyworld_captions():
    prompts = prompt_set(5, seed=3)
    assert prompts == prompt_set(5, seed=3)
    assert prompts != prompt_set(5, seed=4)
    assert len(prompts) == 5 and len({s for _, s in prompts}) == 5
    for text, seed in prompts:
        assert isinstance(seed, int) and 0 <= seed < 2**31
        parsed = parse_caption(text)
        assert len(parsed.objects) == 1 and parsed.background is not None and not parsed.unknown
    assert all(len(parse_caption(t).objects) == 2 for t, _ in prompt_set(3, seed=0, num_objects=2))


def test_describe_config():
    assert describe_config("dense") == "dense"
    assert describe_config("fast") == "fast: sla keep=0.1"
    assert describe_config(SLA) == "sla block_q=16 block_k=16 keep=0.25"


@pytest.fixture(scope="module")
def wan():
    from pipelines.tiny import build_wan_t2v

    return build_wan_t2v()


def test_dense_against_itself_is_identical(wan):
    table = evaluate(wan, "dense", "dense", prompt_set(3, seed=0), TINY, progress=False)
    assert isinstance(table, EvalTable) and len(table.rows) == 3
    assert not hasattr(wan, "turbo")  # restored after every run
    assert all(r.psnr == math.inf and r.ssim == 1.0 for r in table.rows)
    assert all(r.reference_flicker == r.candidate_flicker for r in table.rows)
    summary = table.summary()
    assert summary["psnr"] == math.inf and summary["identical"] == 3 and summary["ssim"] == 1.0
    assert summary["reference_accuracy"] == summary["candidate_accuracy"]
    assert set(summary["reference_accuracy"]) == {"colour", "shape", "motion", "background", "all"}
    assert summary["reference_seconds"] > 0 and summary["candidate_seconds"] > 0 and summary["speedup"] > 0
    text = str(table)
    assert "| metric | reference (dense) | candidate (dense) |" in text and "∞" in text
    data = json.loads(json.dumps(table.to_dict(), allow_nan=False))
    assert data["summary"]["psnr"] == "inf" and len(data["rows"]) == 3
    assert data["rows"][0]["prompt"] == table.rows[0].prompt


def test_dense_against_sla_has_finite_psnr(wan):
    table = evaluate(wan, "dense", SLA, prompt_set(2, seed=0), TINY, progress=False, warmup=False)
    assert not hasattr(wan, "turbo")
    assert all(math.isfinite(r.psnr) and r.ssim <= 1.0 for r in table.rows)
    summary = table.summary()
    assert math.isfinite(summary["psnr"]) and summary["identical"] == 0
    assert table.candidate == "sla block_q=16 block_k=16 keep=0.25"
    assert "dB" in table.markdown(per_prompt=True)


def test_evaluate_leaves_the_pipe_restored_on_error(wan):
    with pytest.raises(Exception, match="keep"):
        evaluate(wan, "dense", {"attention": {"method": "sla", "keep": 5.0}}, prompt_set(1), TINY, progress=False)
    assert not hasattr(wan, "turbo")


# ---------------------------------------------------------------------------------------------------------------- CLI


def test_cli_eval_prints_table_and_writes_json(tmp_path, capsys):
    from pipelines.cli import main

    path = tmp_path / "eval.json"
    code = main(["eval", "--prompts", "2", "--height", "64", "--width", "64", "--frames", "9", "--steps", "2",
                 "--candidate", "sla", "--allow-untuned", "--keep", "0.25", "--block-q", "16", "--block-k", "16",
                 "--no-progress", "--json", str(path)])
    assert code == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| metric |"))
    assert header.startswith("| metric | reference (dense) | candidate (sla ")
    assert all(option in header for option in ("keep=0.25", "block_q=16", "block_k=16"))
    assert "PSNR vs reference" in out and f"wrote {path}" in out
    data = json.loads(path.read_text())
    assert data["summary"]["prompts"] == 2 and len(data["rows"]) == 2
    assert data["call_kwargs"]["height"] == 64 and data["call_kwargs"]["guidance_scale"] == 5.0
    assert isinstance(data["summary"]["psnr"], float)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--candidate", "nope"], "neither a preset"),
        (["--candidate", "sla", "--allow-untuned", "--keep", "2"], "keep=2.0"),
        (["--candidate", "sla"], "--allow-untuned"),
        (["--height", "70"], "multiple of 16"),
        (["--prompts", "0"], "at least 1"),
    ],
)
def test_cli_eval_bad_input_is_one_sentence(argv, words, capsys):
    from pipelines.cli import main

    assert main(["eval", "--steps", "1", "--frames", "5", "--height", "32", "--width", "32", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("turbo: ") and words in err


def test_image_to_video_eval_conditions_on_the_captions_first_frame():
    from turbo.eval.harness import evaluate, first_frame, prompt_set
    from turbo.eval.judge import judge

    prompts = prompt_set(2, seed=3)
    image = first_frame(prompts[0][0], prompts[0][1], 64, 64, 9)
    assert image.size == (64, 64)
    frame = np.asarray(image)[None].repeat(9, 0)
    result = judge(frame, prompts[0][0])  # the rendered first frame holds the captioned object(s)
    assert all(o.colour_ok and o.shape_ok for o in result.objects)
    pipe = build_wan_i2v()
    pipe.set_progress_bar_config(disable=True)
    table = evaluate(pipe, "dense", "dense", prompts, {"height": 64, "width": 64, "num_frames": 9,
                                                      "num_inference_steps": 2}, progress=False)
    assert table.summary()["psnr"] == float("inf")


def test_table_json_keeps_setting_dicts_and_drops_images():
    """HunyuanVideo's prompt_template (a dict of settings) is part of the recorded call; an image is not JSON."""
    table = EvalTable("dense", "dense", {"num_frames": 9, "prompt_template": {"template": "{}", "crop_start": 0},
                                         "image": np.zeros((4, 4, 3)), "nested": {"a": [1]}})
    kwargs = json.loads(json.dumps(table.to_dict()))["call_kwargs"]
    assert kwargs == {"num_frames": 9, "prompt_template": {"template": "{}", "crop_start": 0}}
