#!/usr/bin/env python3
"""Markdown table of `ember-bench soak --json` output (one JSON object per line), with the
issue's criteria: heap flat (growth ≤ 1%), orthonormality ≤ 1e-5, no non-finite step.

Usage: python3 scripts/soak_table.py docs/results/soak/tiny_10000_*.jsonl (one or more files)"""
import json, sys

rows = [json.loads(l) for path in sys.argv[1:] for l in open(path) if l.strip()]
print("| optimizer | steps | refreshes | peak heap at 10% | peak heap at the end | growth | max ‖PᵀP − I‖ | non-finite steps | loss first → last (tail mean) | seconds | criteria |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    g = r.get("peak_heap_growth")
    o = r.get("max_orthonormality_error")
    ok = (g is not None and g <= 0.01) and (o is None or o <= 1e-5) and r["non_finite_steps"] == 0
    print(f"| {r['optimizer']} | {r['steps']} | {r['refreshes']} | {r['peak_heap_first']} | {r['peak_heap_last']} | "
          f"{'n/a' if g is None else f'{100 * g:+.3f}%'} | {'n/a' if o is None else f'{o:.2e}'} | {r['non_finite_steps']} | "
          f"{r['loss_first']:.3f} → {r['loss_last']:.3f} ({r['loss_tail_mean']:.3f}) | {r['seconds']:.0f} | {'met' if ok else 'NOT met'} |")
