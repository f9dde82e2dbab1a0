#!/usr/bin/env python3
"""Kernels by total GPU time from an Nsight Compute CSV (`ncu --metrics gpu__time_duration.sum
--csv --log-file FILE`): total µs, launches, µs a launch, name; the 30 largest.
Usage: ncu_table.py FILE.csv[.gz]"""
import collections
import csv
import gzip
import sys

path = sys.argv[1]
opener = gzip.open if path.endswith(".gz") else open
with opener(path, "rt") as f:
    rows = list(csv.reader(f))
hdr, agg = None, collections.defaultdict(lambda: [0, 0.0])
for r in rows:
    if "Kernel Name" in r:
        hdr = r
        continue
    if not hdr or len(r) != len(hdr):
        continue
    d = dict(zip(hdr, r))
    if d.get("Metric Name") == "gpu__time_duration.sum":
        a = agg[d["Kernel Name"][:90]]
        a[0] += 1
        a[1] += float(d["Metric Value"].replace(",", "")) / 1e3  # ns -> µs
for n, (c, t) in sorted(agg.items(), key=lambda x: -x[1][1])[:30]:
    print(f"{t:10.1f} µs total {c:5d} launches {t / c:8.1f} µs/launch  {n}")
