#!/usr/bin/env python3
"""Launches of one train step by CubeCL kernel name, from the profiling logs of
`scripts/h100_launches_1b.sh` / `scripts/h100_softmax_1b.sh`: the difference between the runs
with 6 and 2 measured steps, over 4. Usage: launch_table.py DIR [WHO...] (WHO: g8, adamw)."""
import collections
import gzip
import os
import sys


def histogram(path):
    counts = collections.Counter()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        for line in f:
            if line.startswith("Executing "):
                counts[line[len("Executing "):].strip()] += 1
    return counts


def find(d, who, steps):
    for name in (f"launches_{who}_{steps}.log.gz", f"launches_{who}_{steps}.log"):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def main():
    d = sys.argv[1]
    for who in sys.argv[2:] or ["g8", "adamw"]:
        a, b = find(d, who, 2), find(d, who, 6)
        if not (a and b):
            continue
        h2, h6 = histogram(a), histogram(b)
        per = {k: (h6[k] - h2[k]) / 4 for k in set(h2) | set(h6)}
        print(f"## {who}: {sum(per.values()):.0f} CubeCL launches per train step")
        print("| launches | kernel |\n|---|---|")
        for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
            if v:
                print(f"| {v:g} | `{k[:100]}` |")


if __name__ == "__main__":
    main()
