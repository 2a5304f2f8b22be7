"""turbo's converted pipeline reproduces TurboDiffusion's own network + rCM sampler (dense attention, fp32, CPU).

Runs only where TurboDiffusion's source has been exported (`bash benchmarks/get_turbodiffusion.sh` →
`.peer/TurboDiffusion`) and its pure-Python imports (einops, loguru, nvidia-ml-py) are installed; CI has neither, so
it skips there. The full check (dense + SLA, bf16 on a GPU) is `python benchmarks/td_equivalence.py`."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from benchmarks import td_equivalence as harness

ref = harness.ref

SOURCE = ref.find_source()
pytestmark = pytest.mark.skipif(
    SOURCE is None,
    reason=f"TurboDiffusion source not exported to {ref.DEFAULT_PATH} (run `bash benchmarks/get_turbodiffusion.sh`)",
)


@pytest.fixture(scope="module")
def turbodiffusion():
    missing = [name for name in ("einops", "loguru", "pynvml") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"TurboDiffusion's code imports {missing}: pip install einops loguru nvidia-ml-py")
    harness.prepare_environment("cpu", ["dense"])
    return ref.import_turbodiffusion()


def test_dense_fp32_latents_match(turbodiffusion, tmp_path):
    from turbo.convert import convert_checkpoint

    state = harness.make_native_checkpoint(tmp_path / "td_tiny.pth", seed=0, topk=0.1)
    converted = convert_checkpoint(tmp_path / "td_tiny.pth", tmp_path / "converted", sla_topk=0.1,
                                   sigma_max=harness.SIGMA_MAX, steps=harness.STEPS, dtype=torch.float32,
                                   heads=harness.HEADS)
    noise, text = harness.make_inputs(0, torch.device("cpu"))
    (expected,) = harness.run_turbodiffusion("dense", state, noise, text, dtype=torch.float32, topk=0.1,
                                             noise_seed=1234, timestep_dtypes=(torch.bfloat16,))
    got, _ = harness.run_turbo("dense", converted, noise, text, dtype=torch.float32, noise_seed=1234)
    max_abs, rel = harness.compare(got, expected)
    assert rel <= harness.TOLERANCE[("dense", "float32")], (max_abs, rel)
    # the check is sensitive: exact (unrounded) timesteps on turbo's side, or another fresh-noise seed, move the
    # result far beyond the tolerance
    exact, _ = harness.run_turbo("dense", converted, noise, text, dtype=torch.float32, noise_seed=1234,
                                 bf16_timesteps=False)
    assert harness.compare(exact, expected)[1] > 100 * harness.TOLERANCE[("dense", "float32")]
    other, _ = harness.run_turbo("dense", converted, noise, text, dtype=torch.float32, noise_seed=4321)
    assert harness.compare(other, expected)[1] > 100 * harness.TOLERANCE[("dense", "float32")]
