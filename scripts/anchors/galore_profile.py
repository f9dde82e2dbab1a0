"""Where galore-torch's GaLoreAdamW step spends its GPU time at 4096×11008 r512 (TF32), and
whether the down product's time depends on the basis's values: torch.mm(P.t(), G) timed with P
from a QR of Gaussian entries, from the SVD of G (what GaLore fits), Gaussian entries, and
Gaussian entries scaled to an orthonormal basis's size (CUDA events, medians of 50); then
torch.profiler over 20 of galore-torch's steps (kernels by total CUDA time). Needs the galore-torch
wheel's directory as its first argument (as torch_anchor.py). Prints JSON lines.
Usage: python3 galore_profile.py WHEEL_DIR OUT_JSONL"""
import importlib, json, os, sys, types, zipfile
import torch

from cuda_timing import timed

# galore-torch's package without its 8-bit module's bitsandbytes import (as torch_anchor.py)
site = "/tmp/anchor_site"
os.makedirs(site, exist_ok=True)
for f in os.listdir(sys.argv[1]):
    if f.endswith(".whl"):
        zipfile.ZipFile(os.path.join(sys.argv[1], f)).extractall(site)
sys.path.insert(0, site)
mod = types.ModuleType("galore_torch"); mod.__path__ = [os.path.join(site, "galore_torch")]
sys.modules["galore_torch"] = mod

torch.backends.cuda.matmul.allow_tf32 = True
dev = torch.device("cuda")
out = open(sys.argv[2], "a")


def emit(row):
    print(json.dumps(row), flush=True)
    out.write(json.dumps(row) + "\n")


m, n, r = 4096, 11008, 512
for g_scale in ([1.0, 1e-3] if os.environ.get("BASES", "1") == "1" else []):
    g = torch.randn(m, n, device=dev) * g_scale
    bases = {
        "qr": torch.linalg.qr(torch.randn(m, r, device=dev))[0],
        "svd": torch.linalg.svd(g, full_matrices=False)[0][:, :r].contiguous(),
        "randn": torch.randn(m, r, device=dev),
        "randn_scaled": torch.randn(m, r, device=dev) / m**0.5,
    }
    emit({"what": "down_by_basis", "g_scale": g_scale,
          **{k + "_us": timed(lambda p=p: torch.mm(p.t(), g)) for k, p in bases.items()}})

GaLoreAdamW = importlib.import_module("galore_torch.adamw").AdamW
w = torch.nn.Parameter(torch.randn(m, n, device=dev) * 0.02)
w.grad = torch.randn(m, n, device=dev)
opt = GaLoreAdamW([{"params": [w], "rank": r, "update_proj_gap": 10**9, "scale": 0.25, "proj_type": "std"}],
                  lr=1e-3, no_deprecation_warning=True)
for _ in range(5):
    opt.step()
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(20):
        opt.step()
    torch.cuda.synchronize()
for e in prof.key_averages():
    if e.device_type == torch.autograd.DeviceType.CUDA or getattr(e, "self_device_time_total", 0) > 0:
        t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if t > 0:
            emit({"what": "galore_torch_kernel", "name": e.key[:160], "calls": e.count, "us_per_step": t / 20})
