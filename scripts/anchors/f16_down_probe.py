"""What the down product R = PᵀG of an f32 gradient costs on f16 tensor cores with power-of-two
scales, against TF32, measured with PyTorch on the GPU (CUDA events, medians of 50): the parts
(G's absolute maximum, the scaled conversion of G to f16, the f16 GEMM with an f32 output) and
their sum, beside the TF32 product on the same operands; and the sampled relative error of both
against an f64 product. Shapes of LLaMA layers (m ≤ n, left basis). Prints JSON lines.
Usage: python3 f16_down_probe.py OUT_JSONL"""
import json, sys
import torch

from cuda_timing import timed

torch.backends.cuda.matmul.allow_tf32 = True
dev = torch.device("cuda")


def rel_err(c, exact):
    return float((c.double() - exact).norm() / exact.norm())


out = open(sys.argv[1], "a")
for (m, n) in ((4096, 11008), (4096, 4096), (2048, 5461)):
    g = torch.randn(m, n, device=dev) * 1e-3
    for r in (128, 256, 512, 1024):
        p, _ = torch.linalg.qr(torch.randn(m, r, device=dev))
        p16 = p.half() * 2.0**14
        amax = g.abs().amax()
        s = 2.0 ** (14 - torch.floor(torch.log2(amax)))
        g16 = (g * s).half()
        try:
            f16 = lambda: torch.mm(p16.t(), g16, out_dtype=torch.float32)
            f16()
        except TypeError:
            f16 = lambda: torch.mm(p16.t(), g16).float()
        row = {"what": "f16_down", "m": m, "n": n, "rank": r,
               "tf32_us": timed(lambda: torch.mm(p.t(), g)),
               "amax_us": timed(lambda: g.abs().amax()),
               "amax_fused_us": timed(lambda: torch.linalg.vector_norm(g, float("inf"))),
               "convert_us": timed(lambda: (g * s).half()),
               "f16_gemm_us": timed(f16),
               "f16_gemm_kmajor_us": timed(lambda: torch.mm(p16.t(), g16.t().contiguous().t())),
               }
        exact = torch.mm(p.t().double(), g.double())
        row["tf32_err"] = rel_err(torch.mm(p.t(), g), exact)
        row["f16_err"] = rel_err(f16().double() / (s * 2.0**14), exact)
        row["f16_sum_us"] = row["amax_fused_us"] + row["convert_us"] + row["f16_gemm_us"]
        print(json.dumps(row), flush=True)
        out.write(json.dumps(row) + "\n")
