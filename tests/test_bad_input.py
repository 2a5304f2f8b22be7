import pytest
import torch

import turbo
from turbo.adapters import METHOD_ATTR

from .pipes import build


@pytest.fixture(scope="module")
def pipe():
    return build("wan-t2v")


def test_unsupported_objects_get_one_sentence_listing_what_is_supported():
    for thing in (torch.nn.Linear(2, 2), object(), "WanPipeline"):
        with pytest.raises(turbo.UnsupportedModelError) as error:
            turbo.accelerate(thing)
        message = str(error.value)
        assert "WanPipeline" in message and "HunyuanVideoPipeline" in message and "\n" not in message


def test_accelerating_twice_is_an_error_until_restored(pipe):
    turbo.accelerate(pipe, attention="dense")
    with pytest.raises(turbo.TurboError, match="already accelerated"):
        turbo.accelerate(pipe, attention="sla")
    turbo.restore(pipe)
    turbo.accelerate(pipe, attention="sla")
    turbo.restore(pipe)
    with pytest.raises(turbo.TurboError, match="not accelerated"):
        turbo.restore(pipe)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"cache": "tdc"}, turbo.NotImplementedMethodError, "Temporal Delta Cache"),
        ({"quant": "fp8"}, turbo.NotImplementedMethodError, "FP8"),
        ({"attention": "sla", "backend": "triton"}, turbo.TurboConfigError, "backend='auto'"),
        ({"attention": "sla", "keep": 0.0}, turbo.TurboConfigError, "(0, 1]"),
        ({"config": "ludicrous"}, turbo.TurboConfigError, "unknown preset"),
    ],
)
def test_bad_configs_fail_at_accelerate_time_and_change_nothing(pipe, kwargs, error, words):
    if kwargs.get("backend") == "triton" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the triton-unavailable path is CPU-only")
    before = {name: id(p) for name, p in pipe.transformer.attn_processors.items()}
    with pytest.raises(error, match=words.replace("(", r"\(").replace("[", r"\[")):
        turbo.accelerate(pipe, **kwargs)
    assert {name: id(p) for name, p in pipe.transformer.attn_processors.items()} == before
    assert not hasattr(pipe, "turbo")
    assert not any(hasattr(m, METHOD_ATTR) for m in pipe.transformer.modules())


def test_default_config_is_safe_for_stock_checkpoints():
    config = turbo.default_config()
    config.check_built()
    # training-free only; dense until a training-free kernel measures faster than cuDNN (see default_config)
    assert config.attention.method == "dense"
    assert (config.quant.mode, config.cache.mode, config.sampler.mode) == ("off", "off", "default")


def test_finetune_presets_warn_in_the_report(pipe):
    turbo.accelerate(pipe, "fast")
    try:
        assert any("fine-tuned" in w for w in pipe.turbo.warnings)
        assert "preset 'fast'" in str(pipe.turbo)
    finally:
        turbo.restore(pipe)
