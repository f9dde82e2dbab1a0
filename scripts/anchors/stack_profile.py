#!/usr/bin/env python3
"""Folds the stack samples of scripts/h100_host_profile.sh (cuda-gdb's `thread apply all bt`)
per thread: for each thread name, how many samples hold each function anywhere in the stack
(inclusive) and at the top (exclusive).

    python3 scripts/anchors/stack_profile.py stacks_fira.txt [--top 40] [--thread NAME]

Function names are shortened: Rust hashes and generic arguments dropped, so that one function
is one line whatever it was instantiated with.
"""
import argparse
import collections
import re

def short(name: str) -> str:
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    # drop generic arguments, innermost first
    prev = None
    while prev != name:
        prev = name
        name = re.sub(r"<([^<>]*)>", lambda m: m.group(0) if " as " in m.group(1) else "", name)
    # `<Type as Trait>::f` → `Type::f`
    name = re.sub(r"<([^<>]*?) as [^<>]*>::", r"\1::", name)
    name = name.replace("{{closure}}", "{closure}")
    return name.strip()


def parse(path):
    samples = []  # list of {thread: [frames]}
    current = None
    thread = None
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if line.startswith("=== sample"):
            current = {}
            samples.append(current)
            thread = None
            continue
        if current is None:
            continue
        if line.startswith("Thread "):
            m = re.search(r'"([^"]*)"\)?:?\s*$', line)
            name = m.group(1) if m else "?"
            tid = line.split()[1]
            thread = (name, tid)
            current[thread] = []
            continue
        if thread and line.startswith("#"):
            # "#N  0x… in NAME (ARGS) from LIB" or "#N  NAME (ARGS) at FILE:LINE"
            body = re.sub(r"^#\d+\s+(?:0x[0-9a-f]+ in )?", "", line)
            body = re.sub(r" (?:from|at) \S+$", "", body)
            cut = body.rfind(" (")
            current[thread].append(short(body[:cut] if cut > 0 else body))
    return [s for s in samples if s]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--thread", default=None)
    a = ap.parse_args()
    samples = parse(a.path)
    by_thread = collections.defaultdict(list)
    for s in samples:
        for (name, tid), frames in s.items():
            by_thread[(name, tid)].append(frames)
    print(f"{len(samples)} samples")
    for (name, tid), stacks in sorted(by_thread.items(), key=lambda kv: kv[0][1]):
        if a.thread and a.thread not in name:
            continue
        incl = collections.Counter()
        excl = collections.Counter()
        for frames in stacks:
            for f in set(frames):
                incl[f] += 1
            if frames:
                excl[frames[0]] += 1
        print(f"\n## thread {tid} {name!r}: {len(stacks)} samples")
        print("inclusive:")
        for f, c in incl.most_common(a.top):
            print(f"  {c:4d}  {f}")
        print("top of stack:")
        for f, c in excl.most_common(12):
            print(f"  {c:4d}  {f}")


if __name__ == "__main__":
    main()
