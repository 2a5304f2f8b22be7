import pytest

from turbo.errors import GeometryError
from turbo.geometry import TokenGeometry, check_video_size, geometry_from_latents, video_token_count
from turbo.runtime import TurboRuntime


def test_wan_token_counts():
    assert video_token_count(480, 832, 81) == 32760
    assert video_token_count(720, 1280, 81) == 75600
    assert geometry_from_latents((1, 16, 21, 60, 104), (1, 2, 2)) == TokenGeometry(21, 30, 52)


@pytest.mark.parametrize(
    "height, width, frames, words",
    [(480, 830, 81, "width=830 must be a positive multiple of 16"), (470, 832, 81, "height=470"),
     (480, 832, 80, "num_frames=80 must be 4k+1"), (480, 832, 0, "num_frames=0")],
)
def test_bad_video_sizes(height, width, frames, words):
    with pytest.raises(GeometryError, match=words.replace("(", r"\(").replace("+", r"\+")):
        check_video_size(height, width, frames)
    check_video_size(480, 832, 81)


def test_latents_not_divisible_by_patch():
    with pytest.raises(GeometryError, match="not divisible by the patch size"):
        geometry_from_latents((1, 16, 21, 61, 104), (1, 2, 2))


def _steps(runtime, calls):
    grid = TokenGeometry(2, 2, 2)
    out = []
    for branch, timestep, step_index in calls:
        runtime.begin_forward(grid, timestep, branch, step_index)
        out.append(runtime.step_index)
    return out


def test_steps_from_timesteps_per_branch_and_new_requests():
    runtime = TurboRuntime()
    calls = [("cond", 999.0, None), ("uncond", 999.0, None), ("cond", 800.0, None), ("uncond", 800.0, None),
             ("cond", 500.0, None), ("uncond", 500.0, None),
             ("cond", 999.0, None), ("uncond", 999.0, None)]  # a new request starts
    assert _steps(runtime, calls) == [0, 0, 1, 1, 2, 2, 0, 0]
    assert runtime.stats.requests == 2


def test_steps_from_pipeline_step_index():
    runtime = TurboRuntime()
    calls = [("cond", 999.0, 0), ("uncond", 999.0, 0), ("cond", 900.0, 1), ("cond", 999.0, 0)]
    assert _steps(runtime, calls) == [0, 0, 1, 0]
    assert runtime.stats.requests == 2


def test_dense_warmup_counts_steps_and_layers():
    runtime = TurboRuntime(dense_steps=2, dense_layers=1)
    decisions = []
    for timestep in (999.0, 900.0, 800.0):
        runtime.begin_forward(TokenGeometry(1, 1, 1), timestep, None, None)
        decisions.append([runtime.layer_is_dense(layer) for layer in range(3)])
    assert decisions == [[True] * 3, [True] * 3, [True, False, False]]
