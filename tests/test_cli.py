import imageio.v3 as iio
import pytest

from pipelines.cli import main


def test_info_lists_methods_and_presets(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "attention methods:", "sla", "svg2", "presets:", "balanced", "models",
                 "toyworld-wan-t2v", "wan2.1-t2v-1.3b", "hunyuanvideo"):
        assert word in out


def test_generate_with_compare_writes_mp4_and_prints_report(tmp_path, capsys):
    path = tmp_path / "demo.mp4"
    code = main(["generate", "--height", "64", "--width", "64", "--frames", "9", "--steps", "2", "--compare",
                 "--attention", "sla", "--allow-untuned", "--keep", "0.5", "--block-q", "16", "--block-k", "16",
                 "--out", str(path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "unaccelerated:" in out and "accelerated:" in out and "speed-up:" in out
    assert "attention  sla (" in out and "keep=0.5" in out
    assert iio.imread(path).shape[0] == 9


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--height", "70"], "height=70 must be a positive multiple of 16"),
        (["--frames", "10"], "num_frames=10 must be 4k+1"),
        (["--attention", "svg2", "--top-p", "0"], "top_p=0.0"),
        (["--attention", "sla", "--keep", "2"], "keep=2.0"),
        (["--model", "/nonexistent/dir"], "nor a directory with a diffusers pipeline"),
        (["--device", "cuda"], "no CUDA GPU"),
    ],
)
def test_generate_bad_input_is_one_sentence(tmp_path, capsys, argv, words):
    import torch

    if "--device" in argv and torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert main(["generate", "--steps", "1", "--out", str(tmp_path / "x.mp4"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("turbo: ") and words in err


def test_generate_from_a_saved_pipeline_directory(tmp_path, capsys):
    from pipelines.tiny import build_wan_t2v

    build_wan_t2v().save_pretrained(tmp_path / "model")
    path = tmp_path / "x.mp4"
    code = main(["generate", "--model", str(tmp_path / "model"), "--height", "64", "--width", "64", "--frames", "9",
                 "--steps", "2", "--attention", "svg", "--density", "0.5", "--dtype", "float32", "--out", str(path)])
    assert code == 0
    assert "attention  svg" in capsys.readouterr().out
    assert iio.imread(path).shape[0] == 9


def test_generate_warns_about_unknown_prompt_words(tmp_path, capsys):
    code = main(["generate", "--prompt", "a red circle zorbling left", "--height", "64", "--width", "64",
                 "--frames", "5", "--steps", "1", "--out", str(tmp_path / "x.mp4")])
    assert code == 0
    out = capsys.readouterr().out
    assert "'zorbling'" in out and "'red'" not in out


def test_generate_verifies_toyworld_checksums(tmp_path, capsys):
    from pipelines.tiny import build_wan_t2v
    from turbo.toyworld.train import save_toyworld

    save_toyworld(build_wan_t2v(), tmp_path / "tw", dtype=None)
    args = ["generate", "--model", str(tmp_path / "tw"), "--height", "64", "--width", "64", "--frames", "5",
            "--steps", "1", "--dtype", "float32", "--out", str(tmp_path / "x.mp4")]
    assert main(args) == 0
    weights = next((tmp_path / "tw" / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-16] + b"0" * 16)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("turbo: ") and weights.name in err


def test_toyworld_directories_get_their_demo_setting_and_true_cfg(tmp_path):
    """A ToyWorld HunyuanVideo directory: the demo size from its recipe and CFG as trained (true CFG, plain
    template)."""
    from pipelines.options import validate_request
    from turbo.toyworld.models import ToyWorldSizes, build_pipeline
    from turbo.toyworld.train import save_toyworld

    sizes = ToyWorldSizes.tiny()
    save_toyworld(build_pipeline("hunyuan-t2v", sizes), tmp_path / "tw", dtype=None,
                  recipe={"sizes": {"demo_height": 48, "demo_width": 32, "demo_frames": 9}})
    request = validate_request(model=str(tmp_path / "tw"), guidance=3)
    assert request.model.toyworld and request.model.family == "hunyuanvideo"
    kwargs = request.call_kwargs()
    assert (kwargs["height"], kwargs["width"], kwargs["num_frames"]) == (48, 32, 9)
    assert kwargs["true_cfg_scale"] == 3.0 and kwargs["negative_prompt"] == "" and "guidance_scale" not in kwargs
    assert kwargs["prompt_template"]["crop_start"] == 0


def test_app_subcommand_hands_its_arguments_to_the_app(monkeypatch):
    import sys
    import types

    import pipelines

    calls = []
    fake = types.ModuleType("pipelines.app")
    fake.main = lambda argv=None: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "pipelines.app", fake)
    monkeypatch.setattr(pipelines, "app", fake, raising=False)
    assert main(["app", "--port", "7861"]) == 0
    assert calls == [["--port", "7861"]]


def test_app_subcommand_without_the_app_is_one_sentence(monkeypatch, capsys):
    import sys

    import pipelines

    monkeypatch.setitem(sys.modules, "pipelines.app", None)
    monkeypatch.delattr(pipelines, "app", raising=False)
    assert main(["app"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("turbo: ") and err.count("\n") == 1


def test_cpu_runs_reuse_freed_memory():
    """`turbo generate` on a CPU keeps freed heap memory for reuse (glibc mallopt); on Linux the settings take."""
    import platform

    from pipelines.cli import reuse_freed_memory

    assert reuse_freed_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_a_hunyuanvideo15_directory_generates_with_the_default_and_refuses_guidance(tmp_path, capsys):
    """A local HunyuanVideo 1.5 pipeline directory: its native 480p defaults, `turbo generate` writes a video with
    turbo's default (the Temporal Delta Cache), and --guidance (the guider's business) is one sentence."""
    from pipelines import tiny
    from pipelines.options import validate_request

    tiny.build_hunyuan15_t2v().save_pretrained(tmp_path / "hv15")
    request = validate_request(model=str(tmp_path / "hv15"))
    assert request.model.family == "hunyuanvideo15" and (request.height, request.width, request.frames) == (
        480, 848, 121)
    assert "guidance_scale" not in request.call_kwargs()
    out = tmp_path / "hv15.mp4"
    small = ["--height", "64", "--width", "64", "--frames", "9", "--steps", "3"]
    assert main(["generate", "--model", str(tmp_path / "hv15"), *small, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "HunyuanVideo15Transformer3DModel" in printed and "cache      tdc" in printed
    assert main(["generate", "--model", str(tmp_path / "hv15"), *small, "--guidance", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("turbo: ") and "guider" in err and err.count("\n") == 1
