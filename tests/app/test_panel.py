"""The app's acceleration panel (pipelines.app_panel) and the registry it offers: unit tests, no server."""

import pytest

from pipelines import app_panel, registry
from turbo.config import PRESETS, TurboConfig


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_round_trips_through_the_panel(preset):
    specs = app_panel.specs()
    values = app_panel.panel_values(preset, specs)
    # the UI fills the panel from the preset; an API caller leaves it at the start values
    for base, shown in ((preset, values), (app_panel.DEFAULT, app_panel.panel_values(app_panel.DEFAULT, specs))):
        config, name = app_panel.panel_config(preset, shown, allow_untuned=True, all_specs=specs, base=base)
        assert isinstance(config, TurboConfig)
        assert config == PRESETS[preset].config
        assert name == preset


def test_every_method_gives_a_valid_config_with_only_its_options_shown():
    specs = app_panel.specs()
    method = app_panel.method_spec(specs)
    assert method.choices, "the method option lists the methods"
    for name in method.choices:
        values = app_panel.panel_values(app_panel.DEFAULT, specs)
        values[method.key] = name
        config, _ = app_panel.panel_config(app_panel.DEFAULT, values, allow_untuned=True, all_specs=specs)
        assert config.attention.method == name
        assert TurboConfig.from_json(config.to_json()) == config
        shown = {s.key for s in specs if app_panel.applies(s, name)}
        assert all(s.key in shown for s in specs if not s.methods)
        assert all((name in s.methods) == (s.key in shown) for s in specs if s.methods)


def test_an_edited_option_overrides_the_preset_and_off_is_unaccelerated():
    specs = app_panel.specs()
    values = app_panel.panel_values("balanced", specs)
    values["density"] = 0.5
    config, _ = app_panel.panel_config("balanced", values, all_specs=specs, base="balanced")
    assert config.attention.method == "svg" and config.attention.density == 0.5
    assert app_panel.panel_config(app_panel.OFF, values, all_specs=specs) == (None, None)


def test_untuned_presets_and_bad_values_are_refused_with_one_sentence():
    import turbo

    specs = app_panel.specs()
    needs = [name for name, p in PRESETS.items() if p.needs_finetuned]
    for name in needs:
        with pytest.raises(turbo.TurboError, match="fine-tuned"):
            app_panel.panel_config(name, app_panel.panel_values(name, specs), all_specs=specs, base=name)
    values = app_panel.panel_values("balanced", specs)
    values["density"] = 7.0
    with pytest.raises(turbo.TurboError) as error:
        app_panel.panel_config("balanced", values, all_specs=specs, base="balanced")
    assert "density" in str(error.value) and "\n" not in str(error.value)


def test_registry_lists_the_shipped_models_and_refuses_an_unknown_name():
    names = {p.name: p for p in registry.list_models()}
    for name, kind in (("toyworld-wan-t2v", "t2v"), ("toyworld-wan-i2v", "i2v"), ("toyworld-hunyuan-t2v", "t2v")):
        assert names[name].kind == kind and registry.is_available(names[name])
    assert {"wan2.1-t2v-1.3b", "wan2.1-i2v-14b-480p", "wan2.2-t2v-a14b", "hunyuanvideo"} <= set(names)
    with pytest.raises(registry.RegistryError) as error:
        registry.get_model("no-such-model")
    message = str(error.value)
    assert "no-such-model" in message and message.count(". ") == 0 and message.endswith(".")


def test_app_flags_default_to_loopback_and_refuse_an_empty_queue():
    from pipelines.app import build_parser, main

    args = build_parser().parse_args([])
    assert args.host == "127.0.0.1" and not args.share and args.queue_size >= 1
    assert main(["--queue-size", "0"]) == 2


def test_build_app_offers_the_model_directory_first_and_lists_missing_models(tmp_path):
    import gradio as gr

    from pipelines.app import build_app
    from pipelines.app_engine import Engine

    engine = Engine(device="cpu", output_dir=str(tmp_path / "out"))
    demo = build_app(engine, model=str(registry.TOYWORLD_DIR / "hunyuan-t2v"))
    dropdowns = [b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Model"]
    assert [d.value for d in dropdowns] == ["toyworld-hunyuan-t2v", "toyworld-wan-i2v"]
    markdown = " ".join(b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and b.value)
    assert "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in markdown  # a model not on this machine says how
    assert engine.loads == 0  # building the UI loads nothing
    engine.close()
