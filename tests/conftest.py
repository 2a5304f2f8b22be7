import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# converted and unpacked models (the packed ToyWorld students) go to a fresh folder, not the user's ~/.cache/turbo
os.environ.setdefault("TURBO_HOME", __import__("tempfile").mkdtemp(prefix="turbo-home-"))

# Triton kernels run on CPU tensors through the interpreter; it must be chosen before any kernel module is imported.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass
