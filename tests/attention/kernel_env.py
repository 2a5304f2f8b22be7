"""Shared set-up of the Triton kernel tests: device, half dtype, seeds, one torch thread."""

import os
import secrets

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HALF = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # the interpreter has no bf16


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # Tiny shapes: one thread avoids OpenMP spin-waiting on a busy box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fresh_seed() -> int:
    """A random seed, or TURBO_TEST_SEED to replay a failure."""
    return int(os.environ.get("TURBO_TEST_SEED", secrets.randbits(31)))
