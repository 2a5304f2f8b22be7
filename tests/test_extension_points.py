"""The extension points: an attention method and a feature registered from this file (no change to turbo's code)
appear in the config, the CLI flags and `pipe.turbo`, run, and undo; a feature whose install raises leaves the
pipeline exactly as it was."""

from dataclasses import dataclass

import numpy as np
import pytest

import turbo
from turbo.attention.base import AttentionMethod
from turbo.config import TurboConfig, option, option_specs, validate_options
from turbo.registry import Feature, register_feature, register_method, unregister_feature, unregister_method

from .pipes import assert_same_snapshot, build, run, snapshot


@dataclass(frozen=True)
class ScaledOptions:
    gain: float = option(1.0, "multiplies the dense attention output (test method)", range=(0.0, 10.0))


class ScaledDense(AttentionMethod):
    """Dense attention times `gain`: gain 1 is the stock result, anything else visibly changes the video."""

    def __init__(self, config, heads, head_dim):
        super().__init__(config, heads, head_dim)
        self.gain = config.gain

    def forward(self, q, k, v, call):
        return call.dense(q, k, v) * self.gain


@dataclass(frozen=True)
class MarkerConfig:
    mode: str = option("off", "test feature that tags the transformer", choices=("off", "tag", "explode"))
    label: str = option("hello", "the tag it writes")

    def __post_init__(self):
        validate_options(self, "marker")


class MarkerFeature(Feature):
    name = "marker"
    config_cls = MarkerConfig
    order = 50

    def install(self, context, section):
        models = []
        try:
            for target in context.targets:
                target.model.turbo_marker = section.label
                models.append(target.model)
                if section.mode == "explode":
                    raise RuntimeError("marker feature failed half-way")
        except BaseException:  # the protocol: a failing install takes back its own partial changes
            self.undo(context, models)
            raise
        return models

    def undo(self, context, models):
        for model in models:
            del model.turbo_marker

    def describe(self, section):
        return f"marker {section.label!r}"


@pytest.fixture
def registered():
    register_method("scaled", options=ScaledOptions, summary="test method")(ScaledDense)
    register_feature(MarkerFeature())
    yield
    unregister_method("scaled")
    unregister_feature("marker")


@pytest.fixture(scope="module")
def pipe():
    return build("wan-t2v")


def test_registered_method_and_feature_appear_in_config_cli_and_report(registered, pipe):
    from pipelines.cli import build_parser
    from pipelines.options import acceleration_overrides

    specs = {s.key: s for s in option_specs()}
    assert "scaled" in specs["attention"].choices and specs["gain"].methods == ("scaled",)
    assert specs["marker"].choices == ("off", "tag", "explode") and specs["marker_label"].flag == "--marker-label"
    config = TurboConfig().replace(attention="scaled", gain=2.0, marker="tag", marker_label="hi")
    assert config.attention.gain == 2.0 and config.marker.label == "hi"
    assert TurboConfig.from_json(config.to_json()) == config

    args = build_parser().parse_args(["generate", "--attention", "scaled", "--gain", "1.5", "--marker", "tag",
                                      "--marker-label", "cli"])
    assert acceleration_overrides(args) == {"attention": "scaled", "gain": 1.5, "marker": "tag",
                                            "marker_label": "cli"}

    baseline = run(pipe, "wan-t2v")
    turbo.accelerate(pipe, attention="scaled", gain=1.0, marker="tag", marker_label="hi")
    try:
        assert pipe.transformer.turbo_marker == "hi"
        assert np.array_equal(run(pipe, "wan-t2v"), baseline)  # gain 1 is exactly the stock attention
        report = str(pipe.turbo)
        assert "attention  scaled (gain=1.0)" in report and "marker 'hi'" in report
        assert pipe.turbo.runtime.stats.calls["scaled"] > 0
    finally:
        turbo.restore(pipe)
    assert not hasattr(pipe.transformer, "turbo_marker")


def test_a_feature_that_fails_to_install_leaves_the_pipeline_exactly_as_it_was(registered, pipe):
    before = snapshot(pipe)
    baseline = run(pipe, "wan-t2v")
    with pytest.raises(RuntimeError, match="half-way"):
        turbo.accelerate(pipe, attention="svg", marker="explode", compile="regional", compile_backend="eager")
    assert not hasattr(pipe, "turbo") and not hasattr(pipe.transformer, "turbo_marker")
    assert_same_snapshot(before, snapshot(pipe))
    assert all(m._compiled_call_impl is None for m in pipe.transformer.modules())
    assert np.array_equal(run(pipe, "wan-t2v"), baseline)
    turbo.accelerate(pipe, attention="svg")  # and it can be accelerated again
    turbo.restore(pipe)


def test_method_option_types_must_agree_across_methods(registered):
    @dataclass(frozen=True)
    class Clash:
        gain: int = option(1, "an int where 'scaled' has a float")

    with pytest.raises(turbo.TurboError, match="option 'gain'"):
        register_method("clash", options=Clash)(ScaledDense)
    assert "clash" not in turbo.registry.attention_methods()


def test_compile_is_undone_by_restore_and_rejects_cudagraphs_without_full_graphs():
    with pytest.raises(turbo.TurboConfigError, match="needs compile='full'"):
        TurboConfig().replace(compile="regional", compile_cudagraphs=True)
    assert TurboConfig().replace(compile=True).compile.mode == "regional"
