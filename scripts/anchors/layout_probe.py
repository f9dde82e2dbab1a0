"""Whether the GaLore down projection R = PᵀG is limited by G's layout, measured with PyTorch on
the GPU (CUDA events, medians of 50). torch.mm(P.t(), G) contracts over G's rows — the strided
dimension of a row-major G (what both galore-torch and Ember run); the same product with G stored
transposed (Gᵀ contiguous, so both operands are contiguous along the contraction: K-major) is
timed beside it, as is the transposed store alone (what producing Gᵀ would cost if it were a
pass of its own). TF32 (f32) and bf16; odd widths (5461) also with rows padded to 5504.
Prints JSON lines. Usage: python3 layout_probe.py OUT_JSONL"""
import json, sys
import torch

from cuda_timing import timed

torch.backends.cuda.matmul.allow_tf32 = True
dev = torch.device("cuda")


out = open(sys.argv[1], "a")
for dtype in (torch.float32, torch.bfloat16):
    for (m, n, r) in ((4096, 11008, 512), (4096, 11008, 128), (2048, 5461, 512), (4096, 4096, 512)):
        p = torch.randn(m, r, device=dev, dtype=dtype)
        g = torch.randn(m, n, device=dev, dtype=dtype)
        gt = g.t().contiguous()  # n × m: the contraction (m) contiguous
        row = {"what": "down_projection_layout", "dtype": str(dtype), "m": m, "n": n, "rank": r,
               "mm_row_major_g_us": timed(lambda: torch.mm(p.t(), g)),
               "mm_k_major_g_us": timed(lambda: torch.mm(gt, p)),
               "transpose_g_us": timed(lambda: g.t().contiguous())}
        if n % 8:
            np_ = (n + 63) // 64 * 64
            gp = torch.zeros(m, np_, device=dev, dtype=dtype)[:, :n]
            gp.copy_(g)
            row["padded_ld"] = np_
            row["mm_padded_g_us"] = timed(lambda: torch.mm(p.t(), gp))
        print(json.dumps(row), flush=True)
        out.write(json.dumps(row) + "\n")
