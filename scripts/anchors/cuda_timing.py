"""The probes' shared timing (`splitk_probe.py`, `layout_probe.py`, `extent_probe.py`): CUDA events
around one call, the median of `n` after five warm-up calls, in µs."""
import statistics
import torch


def timed(f, n=50):
    for _ in range(5):
        f()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); f(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) * 1e3)
    return statistics.median(ts)
