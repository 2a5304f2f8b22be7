"""A running turbo app (pipelines.app.serve) on a free loopback port with the shipped ToyWorld models, one per test
module; helpers to decode videos and render first frames."""

import socket

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

PROMPT_T2V = "a red circle moving left on a gray background"
PROMPT_I2V = "a green square moving down on a white background"
STEPS = 8  # few steps at which the judge reads both prompts (17 frames 256x256)
SEED = 2  # at 8 steps, seed 2 draws one clean circle for PROMPT_T2V (seed 0 draws two); colour/motion pass for both


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(queue_size: int = 8):
    from pipelines.app import serve

    return serve(host="127.0.0.1", port=free_port(), queue_size=queue_size, device="cpu")


def read_video(path: str) -> np.ndarray:
    """Frames of an mp4 as float32 [F, H, W, 3] in [0, 1]."""
    import imageio.v2 as imageio

    with imageio.get_reader(path, "ffmpeg") as reader:
        return np.stack([np.asarray(frame) for frame in reader]).astype(np.float32) / 255.0


def first_frame_png(prompt: str, path) -> str:
    from turbo.eval.harness import first_frame

    first_frame(prompt, 0, 256, 256, 17).save(path)
    return str(path)


@pytest.fixture(scope="module")
def app_server():
    """One server per test module, closed when the module is done (no server outlives the app tests)."""
    server = start_server(queue_size=8)
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server.url, verbose=False)
