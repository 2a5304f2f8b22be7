import json

import pytest

from turbo.config import PRESETS, AttentionConfig, TurboConfig, resolve_config
from turbo.errors import NotImplementedMethodError, TurboConfigError


def test_default_is_dense_and_off():
    config = TurboConfig()
    assert config.attention.method == "dense"
    assert (config.quant.mode, config.cache.mode, config.sampler.mode) == ("off", "off", "default")


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(name):
    config = PRESETS[name].config
    text = config.to_json()
    assert TurboConfig.from_json(text) == config
    assert json.loads(text)["attention"]["method"] == config.attention.method


def test_presets_say_whether_they_need_finetuned_weights():
    assert not PRESETS["quality"].needs_finetuned and not PRESETS["balanced"].needs_finetuned
    assert PRESETS["fast"].needs_finetuned and PRESETS["max"].needs_finetuned


def test_flat_overrides_route_to_their_section():
    config = TurboConfig().replace(method="sla", keep=0.05, dense_steps=3)
    assert config.attention == AttentionConfig(method="sla", keep=0.05, dense_steps=3)
    assert TurboConfig().replace(attention="svg").attention.method == "svg"
    assert TurboConfig().replace(attention={"method": "sla2", "keep": 0.03}).attention.keep == 0.03
    assert TurboConfig().replace(keep=1).attention.keep == 1.0  # int accepted for a float field


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"keep": 0.0}, "keep=0.0 must be in (0, 1]"),
        ({"keep": 1.5}, "keep=1.5"),
        ({"density": -0.1}, "density"),
        ({"method": "flash"}, "not one of"),
        ({"block_q": 100}, "power of two"),
        ({"dense_steps": -1}, "outside"),
        ({"keep": "a lot"}, "expects float"),
        ({"colour": 3}, "unknown option 'colour'"),
        ({"method": "sla", "keep": 0.9, "negligible": 0.2}, "keep + negligible"),
    ],
)
def test_bad_values_fail_with_one_sentence(overrides, words):
    with pytest.raises(TurboConfigError) as error:
        TurboConfig().replace(**overrides)
    assert words in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "section, value, name",
    [("quant", "int8", "INT8"), ("quant", "fp8", "FP8"), ("quant", "nvfp4-mixed", "NVFP4"),
     ("cache", "tdc", "Temporal Delta Cache"), ("sampler", "rcm", "rCM")],
)
def test_methods_not_built_yet_name_themselves(section, value, name):
    config = TurboConfig().replace(**{section: value})
    with pytest.raises(NotImplementedMethodError, match=name):
        config.check_built()


def test_resolve_config_accepts_presets_dicts_and_none():
    default = TurboConfig()
    assert resolve_config(None, default) == (default, None)
    assert resolve_config("fast", default) == (PRESETS["fast"].config, "fast")
    config, preset = resolve_config("fast", default, keep=0.2)
    assert preset == "fast" and config.attention.keep == 0.2
    assert resolve_config({"attention": {"method": "svg"}}, default)[0].attention.method == "svg"
    with pytest.raises(TurboConfigError, match="unknown preset 'turbo'"):
        resolve_config("turbo", default)
    with pytest.raises(TurboConfigError, match="unknown config sections"):
        TurboConfig.from_dict({"attn": {}})


def test_config_is_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        TurboConfig().attention.keep = 0.5  # type: ignore[misc]
