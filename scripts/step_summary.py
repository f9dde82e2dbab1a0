"""One line per `ember-bench step` JSON line: step, engine and NaN-check time, and for projected
methods the two projection matmuls with the precision read off their sampled error.
Usage: python3 step_summary.py FILE.jsonl [...]"""
import json
import sys

for path in sys.argv[1:]:
    for line in open(path):
        r = json.loads(line)
        mm = ""
        if r.get("down_ms") is not None:
            err = max(r["down_rel_err"], r["up_rel_err"])
            mm = f" down {r['down_ms']:.3f} up {r['up_ms']:.3f} {r['matmul_precision']} ({err:.1e})"
        print(f"{r['optimizer']:7} {r['kernels']:6} {r['m']}x{r['n']} r{r['rank']:<5} "
              f"step {r['step_ms']:.3f} engine {r['engine_ms']:.3f} check {r['check_ms']:.3f}{mm}")
