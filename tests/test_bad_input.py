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
        turbo.accelerate(pipe, attention="svg")
    turbo.restore(pipe)
    turbo.accelerate(pipe, attention="svg")
    turbo.restore(pipe)
    with pytest.raises(turbo.TurboError, match="not accelerated"):
        turbo.restore(pipe)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"quant": "nvfp4-mixed"}, turbo.TurboConfigError, "turbo calibrate"),
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
    # training-free only; the Temporal Delta Cache is in it because it measured faster end to end within the
    # ToyWorld bars (see default_config); attention stays dense until a training-free kernel measures faster
    assert config.attention.method == "dense"
    assert (config.quant.mode, config.cache.mode, config.sampler.mode) == ("off", "tdc", "default")


def test_default_is_the_cache_on_a_pipeline_and_nothing_on_a_transformer_alone(pipe):
    from types import SimpleNamespace

    from turbo.config import TurboConfig

    assert turbo.default_config(pipe).cache.mode == "tdc"
    assert turbo.default_config(pipe.transformer) == TurboConfig()  # no pipeline call to count steps in
    wan22 = SimpleNamespace(scheduler=pipe.scheduler, transformer=pipe.transformer, transformer_2=pipe.transformer)
    assert turbo.default_config(wan22) == TurboConfig()  # two transformers: not measured
    turbo.accelerate(pipe)
    try:
        assert pipe.turbo.config.cache.mode == "tdc" and "tdc" in str(pipe.turbo)
        assert str(pipe.turbo).startswith("turbo: default config")
    finally:
        turbo.restore(pipe)
    for options in ({"cache": "off"}, {"vae": "off"}):  # keyword options start from the stock config
        turbo.accelerate(pipe, **options)
        try:
            assert pipe.turbo.config == TurboConfig()
        finally:
            turbo.restore(pipe)
    turbo.accelerate(pipe.transformer)
    try:
        assert pipe.transformer.turbo.config == TurboConfig()
    finally:
        turbo.restore(pipe.transformer)


@pytest.mark.parametrize("kwargs", [{"config": "fast"}, {"config": "max"}, {"attention": "sla"}])
def test_methods_needing_finetuned_weights_are_refused_on_stock_weights(pipe, kwargs):
    before = {name: id(p) for name, p in pipe.transformer.attn_processors.items()}
    with pytest.raises(turbo.TurboConfigError, match="needs turbo-fine-tuned weights.*allow_untuned=True"):
        turbo.accelerate(pipe, **kwargs)
    assert {name: id(p) for name, p in pipe.transformer.attn_processors.items()} == before
    assert not hasattr(pipe, "turbo")


def test_allow_untuned_runs_them_and_says_so_in_the_report(pipe):
    turbo.accelerate(pipe, "fast", allow_untuned=True)
    try:
        assert any("fine-tuned" in w for w in pipe.turbo.warnings)
        assert "preset 'fast'" in str(pipe.turbo) and "untrained turbo parts" in str(pipe.turbo)
    finally:
        turbo.restore(pipe)


def test_saved_finetuned_parts_are_found_and_loaded(tmp_path):
    """A transformer directory carrying turbo_attention.safetensors runs its method without allow_untuned, with the
    saved (trained) parts loaded."""
    from diffusers import WanTransformer3DModel

    model = build("wan-t2v").transformer
    turbo.accelerate(model, attention="sla", keep=0.5, allow_untuned=True)
    trained = {}
    for name, param in model.named_parameters():
        if METHOD_ATTR in name:
            torch.nn.init.normal_(param)
            trained[name] = param.detach().clone()
    model.save_pretrained(tmp_path)  # the transformer's own weights, without turbo's parts
    turbo.restore(model)
    assert not any(METHOD_ATTR in k for k in model.state_dict())
    with pytest.raises(turbo.TurboConfigError):
        turbo.accelerate(WanTransformer3DModel.from_pretrained(tmp_path), attention="sla", keep=0.5)
    turbo.accelerate(model, attention="sla", keep=0.5, allow_untuned=True)
    for name, param in model.named_parameters():
        if name in trained:
            param.data.copy_(trained[name])
    turbo.save_attention_parts(model, tmp_path)
    turbo.restore(model)
    loaded = turbo.accelerate(WanTransformer3DModel.from_pretrained(tmp_path), attention="sla", keep=0.5)
    state = loaded.state_dict()
    assert all(torch.equal(state[name], value) for name, value in trained.items())
    assert "fine-tuned parts from" in str(loaded.turbo)
    assert not any("untrained" in w or "expects turbo-fine-tuned" in w for w in loaded.turbo.warnings)
