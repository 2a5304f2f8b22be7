"""Where the time of one SLA fwd+bwd step goes (torch.profiler, CUDA time per op), Wan 480p, keep 5 %, bf16.

    python3 benchmarks/profile_sla_backward.py"""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from benchmarks.attention import sla_module  # noqa: E402


def main() -> None:
    q, k, v = (torch.randn(1, 32760, 12, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    proj = torch.nn.Linear(128, 128, device="cuda")
    grad = torch.randn_like(q)

    def step():
        out = sla_module(q, k, v, 0.05, proj)
        torch.autograd.grad(out, [q, k, v, proj.weight, proj.bias], grad)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))


if __name__ == "__main__":
    main()
