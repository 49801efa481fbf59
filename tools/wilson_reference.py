#!/usr/bin/env python3
"""Reference values of the Wilson score interval used by actors/src/harness/tests.rs.

Recomputes the 95% Wilson intervals (no continuity correction) of the four examples of
Newcombe, R. G. (1998), "Two-sided confidence intervals for the single proportion: comparison of
seven methods", Statistics in Medicine 17, 857-872, Table I (method 3), with z from the standard
library's inverse normal CDF, and checks them against the published 4-decimal values.

Run: python3 tools/wilson_reference.py   (standard library only)
"""
from math import sqrt
from statistics import NormalDist

# (successes, n, published lower, published upper): Newcombe 1998, Table I, method 3.
NEWCOMBE = [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)]


def wilson(k, n, z):
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def main():
    z = NormalDist().inv_cdf(0.975)
    print(f"z = {z!r}")
    bad = 0
    for k, n, lo, hi in NEWCOMBE + [(20, 20, None, None)]:
        l, h = wilson(k, n, z)
        ok = lo is None or (abs(l - lo) < 5e-5 and abs(h - hi) < 5e-5)
        bad += not ok
        print(f"{k}/{n}: ({l:.6f}, {h:.6f}) published ({lo}, {hi}) {'ok' if ok else 'MISMATCH'}")
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
