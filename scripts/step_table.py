"""The side-by-side step table of a device call: `ember-bench step` JSON lines (step_*.jsonl)
beside the PyTorch anchor (anchor_tf32.json for f32 weights, anchor_bf16.json for bf16) from
the same call. Columns (ms, medians): the step with the default check (flags read back on the
host), with the check kept on the device, without a check, the engine alone, the check pass
alone (over `G`, with its read-back), PyTorch (galore-torch's step, torch's fused AdamW), the
ratios, PyTorch's step timed as Ember's is (host wall clock from before the step to the end of
the synchronization after it; the first PyTorch column is CUDA events, which leave out the host's
launch path before the first kernel and the synchronization's return) with the unchecked ratio
against it, and the operands of Ember's update GEMM (`f16`: f16 tensor cores into the f32 weight;
`f32`: TF32; `—`: no projection) with its sampled relative error against f64.
Usage: python3 step_table.py CALL_DIR"""
import glob
import json
import os
import sys

d = sys.argv[1]
torch = {}
torch_wall = {}
for dtype, name in (("f32", "anchor_tf32.json"), ("bf16", "anchor_bf16.json")):
    path = os.path.join(d, name)
    if not os.path.exists(path):
        continue
    for r in json.load(open(path))["rows"]:
        what = {"galore_torch_step": "galore", "torch_adamw_fused": "adamw"}.get(r.get("what"))
        if what:
            # galore-torch's rows are per rank; torch's AdamW has none
            key = (what, dtype, r["m"], r["n"], r.get("rank") if what == "galore" else None)
            torch[key] = r["ms"]
            if "ms_wall" in r:
                torch_wall[key] = r["ms_wall"]
print("| step | shape | checked (host) | checked (device) | unchecked | engine | check | PyTorch "
      "| ratio (host) | ratio (device) | ratio (unchecked) | PyTorch (wall) | ratio (unchecked, wall) "
      "| update operands (error) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(d, "step_*.jsonl"))):
    for line in open(path):
        r = json.loads(line)
        name = f"{r['optimizer']} {r['weights']}" + (f", {r['state']} state" if r["state"] != "f32" else "")
        # torch's fused AdamW keeps its moments in the parameters' dtype
        rank = r.get("rank") if r["optimizer"] == "galore" else None
        t = torch.get((r["optimizer"], r["weights"], r["m"], r["n"], rank))
        if r["optimizer"] == "adamw" and r["weights"] == "bf16" and r["state"] != "bf16":
            t = None
        cells = [r["step_ms"], r["step_on_device_ms"], r["step_unchecked_ms"], r["engine_ms"], r["check_ms"]]
        shape = f"{r['m']}×{r['n']}" + (f" r{rank}" if rank else "")
        row = [name, shape] + [f"{c:.2f}" for c in cells]
        row.append(f"{t:.2f}" if t else "—")
        row += [f"{c / t:.2f}×" if t else "—" for c in cells[:3]]
        tw = torch_wall.get((r["optimizer"], r["weights"], r["m"], r["n"], rank)) if t else None
        row += [f"{tw:.2f}", f"{cells[2] / tw:.2f}×"] if tw else ["—", "—"]
        ops, err = r.get("update_operands"), r.get("update_rel_err")
        if ops and (r.get("update_gemm") or "").startswith("cublaslt-128x128"):
            ops += ", 128×128 tiles"
        row.append(f"{ops} ({err:.1e})" if ops and err is not None else (ops or "—"))
        print("| " + " | ".join(row) + " |")
