"""Every bad `turbo` input is refused before any model loads: exit code 2, one line `turbo: ...` on stderr, no
traceback."""

import pytest

from pipelines.cli import main


@pytest.fixture(autouse=True)
def no_loading(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a bad input")

    monkeypatch.setattr("pipelines.registry.load_pipeline", refuse)
    monkeypatch.setattr("pipelines.tiny.build_default", refuse)


def _png(path):
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return str(path)


def _not_an_image(path):
    path.write_text("this is text, not a PNG")
    return str(path)


CASES = {
    "width 0": (["--width", "0"], "width=0"),
    "frames 0": (["--frames", "0"], "num_frames=0"),
    "steps 0": (["--steps", "0"], "steps=0"),
    "steps -1": (["--steps", "-1"], "steps=-1"),
    "height 70": (["--height", "70"], "height=70"),
    "frames 10": (["--frames", "10"], "num_frames=10"),
    "guidance -1": (["--guidance", "-1"], "guidance=-1"),
    "guidance nan": (["--guidance", "nan"], "guidance=nan"),
    "device tpu": (["--device", "tpu"], "'tpu'"),
    "device cuda": (["--device", "cuda"], "no CUDA GPU"),
    "device cuda:7": (["--device", "cuda:7"], "CUDA"),
    "image missing": (["--model", "toyworld-wan-i2v", "--image", "missing.png"], "does not exist"),
    "image not an image": (["--model", "toyworld-wan-i2v", "--image", "{text}"], "not a readable image"),
    "image for t2v": (["--image", "{png}"], "text-to-video"),
    "i2v without image": (["--model", "toyworld-wan-i2v"], "--image"),
    "out in a missing folder": (["--out", "/nonexistent/dir/x.mp4"], "does not exist"),
    "quant nvfp4-mixed": (["--quant", "nvfp4-mixed"], "turbo calibrate"),
    "abbreviation --quant-mode-ish": (["--quant-mode-ish", "1"], "unrecognized arguments"),
    "abbreviation --kee": (["--kee", "0.1"], "unrecognized arguments"),
    "abbreviation --quantiz": (["--quantiz"], "unrecognized arguments"),
    "unknown model": (["--model", "wan9-t2v"], "unknown model 'wan9-t2v'"),
    "missing model dir": (["--model", "./no/such/dir"], "nor a directory"),
    "hub model not in the cache": (["--model", "wan2.1-t2v-1.3b"], "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
    "untuned sla": (["--preset", "fast"], "--allow-untuned"),
    "rcm with too many steps": (["--sampler", "rcm", "--steps", "8"], "rCM sampler runs 1 to 4 steps"),
    "rcm on hunyuanvideo": (["--sampler", "rcm", "--model", "toyworld-hunyuan-t2v"], "Wan pipelines only"),
    "bad option value": (["--attention", "svg", "--density", "2"], "density"),
    "bad dtype": (["--dtype", "float8"], "invalid choice"),
}


def _check_refused(capsys, code):
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("turbo: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_generate_refuses_bad_input_before_loading(tmp_path, capsys, case):
    import torch

    argv, words = CASES[case]
    if case.startswith("device cuda") and torch.cuda.is_available():
        pytest.skip("CUDA present")
    files = {"{png}": lambda: _png(tmp_path / "frame.png"), "{text}": lambda: _not_an_image(tmp_path / "x.png")}
    argv = [files[a]() if a in files else a for a in argv]
    code = main(["generate", "--out", str(tmp_path / "x.mp4"), *argv])
    assert words in _check_refused(capsys, code)


def test_config_check_errors_say_what_the_python_api_says(tmp_path, capsys):
    import turbo
    from turbo.config import resolve_config

    with pytest.raises(turbo.TurboConfigError) as error:
        resolve_config(None, turbo.default_config(), quant="nvfp4-mixed")[0].check_built()
    code = main(["generate", "--quant", "nvfp4-mixed", "--out", str(tmp_path / "x.mp4")])
    assert _check_refused(capsys, code) == f"turbo: {error.value}"


@pytest.mark.parametrize("argv, words", [
    (["--frames", "0"], "num_frames=0"),
    (["--candidate", "nope"], "neither a preset"),
    (["--candidate", "sla"], "--allow-untuned"),
    (["--prompts", "0"], "--prompts"),
    (["--kee", "0.1"], "unrecognized arguments"),
    (["--json", "/nonexistent/dir/x.json"], "does not exist"),
])
def test_eval_refuses_bad_input_before_loading(capsys, argv, words):
    assert words in _check_refused(capsys, main(["eval", *argv]))


def test_missing_command_and_unknown_flag_are_one_line(capsys):
    _check_refused(capsys, main([]))
    _check_refused(capsys, main(["info", "--nope"]))
