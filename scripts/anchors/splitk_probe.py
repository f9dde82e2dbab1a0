"""How much a split of K (summing partial products) would buy the GaLore down projection
R = PᵀG over cuBLAS's default choice, measured with PyTorch on the GPU (CUDA events, medians of
50): for each shape, torch.mm(P.t(), G) (what galore-torch runs, cuBLAS's heuristic), then
torch.bmm over s slices of K with a sum (s = 2, 3, 4, 8), TF32 (f32) and bf16. Prints JSON lines.
Usage: python3 splitk_probe.py OUT_JSONL"""
import json, sys
import torch

from cuda_timing import timed

torch.backends.cuda.matmul.allow_tf32 = True
dev = torch.device("cuda")


out = open(sys.argv[1], "a")
for dtype in (torch.float32, torch.bfloat16):
    for (m, n, r) in ((4096, 11008, 512), (2048, 5461, 512), (2048, 2048, 512), (4096, 4096, 512), (4096, 11008, 128)):
        p = torch.randn(m, r, device=dev, dtype=dtype)
        g = torch.randn(m, n, device=dev, dtype=dtype)
        row = {"what": "down_projection", "dtype": str(dtype), "m": m, "n": n, "rank": r,
               "mm_us": timed(lambda: torch.mm(p.t(), g))}
        for s in (2, 3, 4, 8):
            if m % s:
                continue
            pk = p.view(s, m // s, r).transpose(1, 2)   # s × r × m/s
            gk = g.view(s, m // s, n)                   # s × m/s × n
            row[f"split{s}_us"] = timed(lambda: torch.bmm(pk, gk).sum(0))
        print(json.dumps(row), flush=True)
        out.write(json.dumps(row) + "\n")
