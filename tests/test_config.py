import json

import pytest

from turbo.config import CONFIG_VERSION, PRESETS, AttentionConfig, TurboConfig, option_specs, resolve_config
from turbo.errors import TurboConfigError
from turbo.registry import attention_methods


def test_default_is_dense_and_off():
    config = TurboConfig()
    assert config.attention.method == "dense"
    assert (config.quant.mode, config.cache.mode, config.sampler.mode, config.compile.mode) == (
        "off", "off", "default", "off")
    assert json.loads(config.to_json())["version"] == CONFIG_VERSION


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
    assert TurboConfig().replace(attention="sla", keep=1).attention.keep == 1.0  # int accepted for a float field
    assert PRESETS["fast"].config.replace(keep=0.05).attention.keep == 0.05  # routes to the current method
    assert TurboConfig().replace(compile="full", compile_cudagraphs=True).compile.cudagraphs
    assert TurboConfig().replace(compile=True).compile.mode == "regional"


def test_method_options_do_not_collide():
    """Each method owns its options: an option of another method is an error naming who has it."""
    with pytest.raises(TurboConfigError, match="attention method 'dense' has no option 'keep' .*sla, sla2"):
        TurboConfig().replace(keep=0.05)
    with pytest.raises(TurboConfigError, match="has no option 'density'"):
        TurboConfig().replace(attention="sla", density=0.2)
    sla = AttentionConfig(method="sla", keep=0.2)
    assert sla.keep == 0.2 and not hasattr(sla, "density")
    # switching method starts from the new method's defaults; shared settings stay
    svg = PRESETS["fast"].config.replace(dense_steps=4).replace(attention="svg").attention
    assert svg.method == "svg" and svg.density == 0.25 and svg.dense_steps == 4


def test_saved_configs_carry_a_version_and_refuse_newer_ones():
    config = PRESETS["balanced"].config
    data = json.loads(config.to_json())
    assert TurboConfig.from_dict(data) == config
    del data["version"]  # configs saved before versions existed read as version 1
    assert TurboConfig.from_dict(data) == config
    with pytest.raises(TurboConfigError, match="newer than this turbo understands"):
        TurboConfig.from_dict({**data, "version": CONFIG_VERSION + 1})


def test_option_specs_cover_every_section_and_method_option():
    specs = {s.key: s for s in option_specs()}
    assert specs["attention"].choices == tuple(attention_methods())
    assert specs["keep"].methods == ("sla", "sla2") and specs["keep"].type is float
    assert specs["density"].methods == ("svg",)
    assert specs["quant"].choices == ("off", "fp8", "int8", "nvfp4", "nvfp4-mixed")
    assert specs["compile"].flag == "--compile" and specs["compile_cudagraphs"].type is bool
    assert len({s.flag for s in specs.values()}) == len(specs)  # no two options share a flag
    for spec in specs.values():  # every key is accepted by replace with its default (or a valid value)
        method = spec.methods[0] if spec.methods else "dense"
        value = spec.default if spec.default is not None else spec.choices[0]
        TurboConfig().replace(attention=method).replace(**{spec.key: value})


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"method": "sla", "keep": 0.0}, "keep=0.0 must be in (0, 1]"),
        ({"method": "sla", "keep": 1.5}, "keep=1.5"),
        ({"method": "svg", "density": -0.1}, "density"),
        ({"method": "flash"}, "not one of"),
        ({"method": "sla", "block_q": 100}, "power of two"),
        ({"dense_steps": -1}, "outside"),
        ({"method": "sla", "keep": "a lot"}, "expects float"),
        ({"colour": 3}, "unknown option 'colour'"),
        ({"method": "sla", "keep": 0.9, "negligible": 0.2}, "keep + negligible"),
        ({"compile": "always"}, "not one of"),
    ],
)
def test_bad_values_fail_with_one_sentence(overrides, words):
    with pytest.raises(TurboConfigError) as error:
        TurboConfig().replace(**overrides)
    assert words in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "section, value, words",
    [("quant", "nvfp4-mixed", "turbo calibrate")],
)
def test_modes_missing_their_inputs_fail_the_config_check(section, value, words):
    config = TurboConfig().replace(**{section: value})
    with pytest.raises(TurboConfigError, match=words):
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
