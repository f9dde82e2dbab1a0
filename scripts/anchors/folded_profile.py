#!/usr/bin/env python3
"""Sums a folded CPU profile (`pretrain` built with `--features profile`, `EMBER_PROFILE=FILE`:
lines `THREAD;ROOT;...;LEAF COUNT`) per thread: each thread's share of the samples, and per
function the samples whose stack holds it (inclusive) and those where it is the leaf (self).

    python3 scripts/anchors/folded_profile.py profile.folded[.gz] [--top 40] [--thread NAME]
        [--under FUNCTION_SUBSTRING] [--hz 997]

Function names are shortened (Rust hashes and generic arguments dropped) so that one function
is one line whatever it was instantiated with.
"""
import argparse
import collections
import gzip
import re


def short(name: str) -> str:
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    prev = None
    while prev != name:
        prev = name
        name = re.sub(r"<([^<>]*)>", lambda m: m.group(0) if " as " in m.group(1) else "", name)
    name = re.sub(r"<([^<>]*?) as [^<>]*>::", r"\1::", name)
    return name.replace("{{closure}}", "{closure}").strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--thread", default=None)
    ap.add_argument("--under", default=None, help="only stacks holding a function with this text")
    ap.add_argument("--hz", type=float, default=997.0)
    a = ap.parse_args()
    stacks = collections.defaultdict(list)  # thread -> [(frames, count)]
    opener = gzip.open if a.path.endswith(".gz") else open
    for line in opener(a.path, "rt", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        body, _, count = line.rpartition(" ")
        parts = body.split(";")
        thread, frames = parts[0], [short(f) for f in parts[1:]]
        if a.under and not any(a.under in f for f in frames):
            continue
        stacks[thread].append((frames, int(count)))
    total = sum(c for v in stacks.values() for _, c in v)
    print(f"{total} samples ({total / a.hz:.2f} s of CPU at {a.hz:g} Hz)")
    for thread, rows in sorted(stacks.items(), key=lambda kv: -sum(c for _, c in kv[1])):
        if a.thread and a.thread not in thread:
            continue
        n = sum(c for _, c in rows)
        incl = collections.Counter()
        leaf = collections.Counter()
        for frames, c in rows:
            for f in set(frames):
                incl[f] += c
            if frames:
                leaf[frames[-1]] += c
        print(f"\n## {thread}: {n} samples ({n / a.hz:.2f} s)")
        print("inclusive:")
        for f, c in incl.most_common(a.top):
            print(f"  {c:6d} {100 * c / n:5.1f}%  {f}")
        print("self:")
        for f, c in leaf.most_common(min(a.top, 20)):
            print(f"  {c:6d} {100 * c / n:5.1f}%  {f}")


if __name__ == "__main__":
    main()
