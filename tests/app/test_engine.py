"""pipelines.app_engine without a server: timings come from forward hooks, CUDA out of memory becomes a suggestion."""

import pytest
import torch

from pipelines import options
from pipelines.app_engine import Engine, OutOfMemory, module_timer


class _OutOfMemoryPipe:
    def set_progress_bar_config(self, **_):
        pass

    def __call__(self, **_):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_cuda_out_of_memory_is_one_sentence_with_a_suggestion(tmp_path):
    engine = Engine(device="cpu", output_dir=str(tmp_path / "out"))
    request = options.validate_request(model="toyworld-wan-t2v", height=720, width=1280, frames=81, steps=2)
    engine._pipes[request.model.name] = _OutOfMemoryPipe()
    with pytest.raises(OutOfMemory, match="1280x720, 81 frames; try a smaller size or fewer frames"):
        engine.generate(request)
    engine.close()
    assert not (tmp_path / "out").exists()


def test_module_timer_measures_only_while_modules_run():
    class Pipe:
        transformer = torch.nn.Linear(4, 4)
        text_encoder = torch.nn.Linear(4, 4)

    pipe = Pipe()
    with module_timer(pipe) as timings:
        pipe.transformer(torch.ones(2, 4))
    assert set(timings) == {"transformer", "text encoder"}
    assert timings["transformer"] > 0 and timings["text encoder"] == 0
    assert not pipe.transformer._forward_hooks and not pipe.transformer._forward_pre_hooks
