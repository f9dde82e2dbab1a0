#!/usr/bin/env python3
"""bitsandbytes' dynamic 8-bit maps, value for value, without torch or bitsandbytes.

`bitsandbytes.functional.create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)` builds
the code book of its 8-bit optimizers (signed for the first moment, unsigned for the second):

    for i in range(7):
        n = 2**i + 1 if signed else 2**(i + 1) + 1
        b = torch.linspace(0.1, 1, n)              # float32
        means = (b[:-1] + b[1:]) / 2.0
        data += (10 ** (i - 6) * means).tolist()   # and the negatives when signed
    data += [0, 1.0]; data.sort()

This script replays that construction in float32 arithmetic (each operation rounded to float32
through `struct`): torch's CPU `linspace` is `start + step*i` below the midpoint and
`end - step*(n-1-i)` from it, `step = (end - start)/(n - 1)` in float32, and a Python scalar
times a float32 tensor is a float32 product with the scalar rounded to float32. It prints the
two maps as the Rust table of `crates/kernels/src/blockwise.rs`' test (`f32::from_bits`).
"""
import struct


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def linspace(start, end, n):
    start, end = f32(start), f32(end)
    step = f32(f32(end - start) / f32(n - 1))
    half = n // 2
    return [
        f32(start + f32(step * i)) if i < half else f32(end - f32(step * (n - 1 - i)))
        for i in range(n)
    ]


def dynamic_map(signed):
    data = []
    for i in range(7):
        n = 2**i + 1 if signed else 2 ** (i + 1) + 1
        b = linspace(0.1, 1.0, n)
        means = [f32(f32(b[k] + b[k + 1]) / 2.0) for k in range(n - 1)]
        scale = f32(10.0 ** (i - 6))
        data += [f32(scale * m) for m in means]
        if signed:
            data += [f32(-scale * m) for m in means]
    data += [0.0, 1.0]
    assert len(data) == 256
    return sorted(data)


if __name__ == "__main__":
    for name, signed in [("SIGNED", True), ("UNSIGNED", False)]:
        values = dynamic_map(signed)
        print(f"const {name}: [u32; 256] = [")
        for k in range(0, 256, 8):
            print("    " + ", ".join(f"0x{bits(v):08x}" for v in values[k : k + 8]) + ",")
        print("];")
