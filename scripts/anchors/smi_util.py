#!/usr/bin/env python3
"""The GPU's utilization from `nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader
-lms 100` (the share of each sample period in which a kernel ran): median, 10th and 90th
percentiles over the samples after the first fifth of the run (its start: the process, the
first refresh). Usage: smi_util.py FILE.csv"""
import sys

u = []
for line in open(sys.argv[1]):
    p = [x.strip() for x in line.split(",")]
    try:
        u.append(float(p[1].split()[0]))
    except (IndexError, ValueError):
        pass
u = sorted(u[len(u) // 5:])
if u:
    print("%s: GPU utilization over %d samples: median %.0f%%, p10 %.0f%%, p90 %.0f%%" % (
        sys.argv[1].split("/")[-1], len(u), u[len(u) // 2], u[len(u) // 10], u[9 * len(u) // 10]))
else:
    print("%s: no utilization samples" % sys.argv[1].split("/")[-1])
