"""Whether a one-thread kernel spinning on a flag in another stream (what burn's stream runs while
Ember's cuBLAS window computes: CubeCL's wait kernel) slows a cuBLAS GEMM that runs beside it:
torch.mm(P.t(), G) for GaLore's down product (TF32, P orthonormal), timed by CUDA events alone
and with a Triton kernel spinning on a device flag in a second stream until the GEMM's stream
sets it: a plain volatile load (`load`), `atomicAdd(p, 0)` as CubeCL's atomic load compiles
(`atomic`), a load with `nanosleep` between tries (`sleep`), loads between runs of dependent
arithmetic (`alu`). Medians of 30. Prints JSON lines. Usage: python3 spin_probe.py OUT_JSONL"""
import json, statistics, sys
import torch
import triton
import triton.language as tl

torch.backends.cuda.matmul.allow_tf32 = True
dev = torch.device("cuda")


@triton.jit
def spin(flag_ptr):
    v = tl.load(flag_ptr, volatile=True)
    while v == 0:
        v = tl.load(flag_ptr, volatile=True)


@triton.jit
def spin_atomic(flag_ptr):
    # what CubeCL's `Atomic::load` compiles to: `atomicAdd(p, 0)`
    v = tl.atomic_add(flag_ptr, 0)
    while v == 0:
        v = tl.atomic_add(flag_ptr, 0)


@triton.jit
def spin_sleep(flag_ptr):
    v = tl.load(flag_ptr, volatile=True)
    while v == 0:
        v = tl.inline_asm_elementwise("nanosleep.u32 2000; mov.b32 $0, $1;", "=r,r", [v],
                                      dtype=tl.int32, is_pure=False, pack=1)
        v = tl.load(flag_ptr, volatile=True)


@triton.jit
def spin_alu(flag_ptr, x_ptr):
    x = tl.load(x_ptr)
    v = tl.load(flag_ptr, volatile=True)
    while v == 0:
        for _ in range(256):
            x = x * 0.999999 + 1e-7
        v = tl.load(flag_ptr, volatile=True) + (x > 1e30).to(tl.int32)


def run(f, spinning, n=30):
    x = torch.ones(1, device=dev)
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    flag = torch.zeros(1, device=dev, dtype=torch.int32)
    ts = []
    for i in range(n + 5):
        with torch.cuda.stream(s1):
            flag.zero_()
        if spinning:
            s2.wait_stream(s1)
            with torch.cuda.stream(s2):
                if spinning == "alu":
                    spin_alu[(1,)](flag, x, num_warps=1)
                else:
                    {"load": spin, "atomic": spin_atomic, "sleep": spin_sleep}[spinning][(1,)](flag, num_warps=1)
        with torch.cuda.stream(s1):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); f(); b.record()
            flag.fill_(1)
        torch.cuda.synchronize()
        if i >= 5:
            ts.append(a.elapsed_time(b) * 1e3)
    return statistics.median(ts)


out = open(sys.argv[1], "a")
for (m, n, r) in ((4096, 11008, 512), (4096, 11008, 128), (2048, 5461, 512)):
    g = torch.randn(m, n, device=dev) * 1e-3
    p = torch.linalg.qr(torch.randn(m, r, device=dev))[0]
    nn = torch.randn(r, n, device=dev).half()
    p16 = p.half()
    row = {"what": "spin", "m": m, "n": n, "rank": r,
           "down_us": run(lambda: torch.mm(p.t(), g), False),
           "down_spin_us": run(lambda: torch.mm(p.t(), g), "load"),
           "down_atomic_us": run(lambda: torch.mm(p.t(), g), "atomic"),
           "down_sleep_us": run(lambda: torch.mm(p.t(), g), "sleep"),
           "down_alu_us": run(lambda: torch.mm(p.t(), g), "alu"),
           "update_us": run(lambda: torch.mm(p16, nn, out_dtype=torch.float32), False),
           "update_spin_us": run(lambda: torch.mm(p16, nn, out_dtype=torch.float32), "load"),
           "update_atomic_us": run(lambda: torch.mm(p16, nn, out_dtype=torch.float32), "atomic"),
           "update_sleep_us": run(lambda: torch.mm(p16, nn, out_dtype=torch.float32), "sleep")}
    print(json.dumps(row), flush=True)
    out.write(json.dumps(row) + "\n")
