#!/usr/bin/env python3
"""Generate the fake-quantizer fixture for kernels-cpu's QAT tests (kernels-cpu/tests/fake_quant.rs).

torch is the oracle. For each case (a GGUF block type and a group size) the script builds random
weights W [rows, row_len] (normal * 0.05 with a few outliers), LSQ steps s and mins m per group at
0.9 x the min-max initialisation (so some weights clip) with a few steps pushed to 0.5x / 1.7x, and
a random cotangent R, then computes:

- the format-exact forward in float32 exactly as the GGUF blocks store it: Q8_0 / Q5_0 / Q5_1 take
  d = f16(s) (and m = f16(-m) for Q5_1); Q6_K takes d = f16(max s / 127) per 256-value super-block
  and integer sub-scales clamp(round(s / d), 1, 127); Q5_K d = f16(max s / 63),
  dmin = f16(max max(m, 0) / 63), 6-bit sc = clamp(round(s / d), 1, 63) and mm =
  clamp(round(max(m, 0) / dmin), 0, 63); effective step s~ = d * sc, min m~ = dmin * mm; codes
  clamp(round((w + m~) / s~)) (torch.round: half to even); value s~ * code - m~;
- the gradients of L = sum(R * what) by torch autograd in the style of lsq-net
  (zhutmost/lsq-net quan/quantizer/lsq.py): grad_scale(x, g) = (x - x*g).detach() + x*g with
  g = 1/sqrt(group * Q_P), round_pass(x) = (x.round() - x).detach() + x, the rounding of the step
  to its stored fields passed straight through (s~ = s + (s~ - s).detach()).

Output: one little-endian binary file (default kernels-cpu/tests/fixtures/fake_quant/lsq_ref.bin):

  magic   8 bytes  b"MMFQUANT"
  version u32      1
  info    u32 length + utf-8 text (format, regenerate command, torch version)
  n_cases u32
  case    u32 ggml type id, u32 group, u32 rows, u32 row_len, then f32 arrays:
          w[rows*row_len], s[P], m[P or 0], r[N], out[N], dw[N], ds[P], dm[P or 0]
          with N = rows*row_len and P = N / group (m, dm empty for the symmetric types)
  end     4 bytes  b"END\\0"

Regenerate (from the repository root): pyenv/bin/python tools/gen_fake_quant_fixtures.py
"""
import argparse
import math
import struct
from pathlib import Path

import torch

MIN_STEP = 2.0 ** -24
# name: (ggml type id, lo, hi, asymmetric, super-block scale max or None)
TYPES = {
    "Q8_0": (8, -127, 127, False, None),
    "Q5_0": (6, -16, 15, False, None),
    "Q6_K": (14, -32, 31, False, 127),
    "Q5_1": (7, 0, 31, True, None),
    "Q5_K": (13, 0, 31, True, 63),
}
CASES = [("Q8_0", 32), ("Q8_0", 64), ("Q5_0", 32), ("Q6_K", 16), ("Q6_K", 32), ("Q6_K", 64),
         ("Q5_1", 32), ("Q5_1", 64), ("Q5_K", 32), ("Q5_K", 64)]
ROWS, ROW_LEN = 2, 256


def f16(x):
    return x.to(torch.float16).to(torch.float32)


def floor_step(s):
    return torch.where(s >= MIN_STEP, s, torch.full_like(s, MIN_STEP))


def grid(name, s, m, group):
    """Effective steps and mins [rows, groups], float32, as the blocks store them."""
    _, _, _, asym, smax = TYPES[name]
    s = floor_step(s)
    if smax is None:
        step = f16(s)
        mins = -f16(-m) if asym else torch.zeros_like(s)
        return step, mins
    rows = s.shape[0]
    per = 256 // group
    sv = s.reshape(rows, -1, per)
    d = f16(sv.amax(-1, keepdim=True) / smax)
    sc = torch.where(d > 0, torch.clamp(torch.round(sv / d), 1, smax), torch.zeros_like(sv))
    step = (d * sc).reshape(rows, -1)
    if not asym:
        return step, torch.zeros_like(step)
    mp = m.clamp(min=0).reshape(rows, -1, per)
    dmin = f16(mp.amax(-1, keepdim=True) / 63)
    mm = torch.where(dmin > 0, torch.clamp(torch.round(mp / dmin), 0, 63), torch.zeros_like(mp))
    return step, (dmin * mm).reshape(rows, -1)


def minmax(name, w, group):
    _, lo, hi, asym, _ = TYPES[name]
    wg = w.reshape(w.shape[0], -1, group)
    mn, mx = wg.amin(-1), wg.amax(-1)
    if name == "Q5_K":
        m = -mn.clamp(max=0)
        return (mx.clamp(min=0) + m) / hi, m
    if name == "Q5_1":
        return (mx - mn) / hi, -mn
    return torch.maximum(mx.clamp(min=0) / hi, -mn.clamp(max=0) / -lo), torch.zeros_like(mn)


def expand(x, group):
    return x.repeat_interleave(group, dim=1)


def case(name, group, gen):
    type_id, lo, hi, asym, _ = TYPES[name]
    w = torch.randn(ROWS, ROW_LEN, generator=gen) * 0.05
    w.view(-1)[torch.randint(0, ROWS * ROW_LEN, (6,), generator=gen)] *= 8.0
    s0, m0 = minmax(name, w, group)
    s = (s0 * 0.9).float()
    m = (m0 * 0.9).float()
    s.view(-1)[1] *= 0.5
    s.view(-1)[3] *= 1.7
    r = torch.randn(ROWS, ROW_LEN, generator=gen)

    step, mins = grid(name, s, m, group)
    u = (w + expand(mins, group)) / expand(step, group)
    c = torch.clamp(torch.round(u), lo, hi) + 0.0  # + 0.0: a code 0 is +0, as an integer code is
    out = expand(step, group) * c - expand(mins, group)

    g = 1.0 / math.sqrt(group * hi)
    wp = w.clone().requires_grad_(True)
    sp = s.clone().requires_grad_(True)
    mp = m.clone().requires_grad_(True)
    s_sc = (sp - sp * g).detach() + sp * g
    m_sc = (mp - mp * g).detach() + mp * g
    step_e = s_sc + (step - s_sc).detach()
    min_e = (m_sc + (mins - m_sc).detach()) if asym else torch.zeros_like(step)
    ue = (wp + expand(min_e, group)) / expand(step_e, group)
    uc = torch.clamp(ue, lo, hi)
    ce = (uc.round() - uc).detach() + uc
    what = ce * expand(step_e, group) - expand(min_e, group)
    (r * what).sum().backward()

    arrays = [w, s, m if asym else None, r, out, wp.grad, sp.grad, mp.grad if asym else None]
    blob = struct.pack("<4I", type_id, group, ROWS, ROW_LEN)
    for a in arrays:
        if a is not None:
            blob += a.detach().float().contiguous().numpy().astype("<f4").tobytes()
    clipped = int(((u < lo) | (u > hi)).sum())
    return blob, clipped


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="kernels-cpu/tests/fixtures/fake_quant/lsq_ref.bin")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(20261207)
    info = (
        "format: MMFQUANT v1 (tools/gen_fake_quant_fixtures.py)\n"
        "regenerate: pyenv/bin/python tools/gen_fake_quant_fixtures.py\n"
        f"torch: {torch.__version__}\n"
    ).encode()
    body = b"MMFQUANT" + struct.pack("<I", 1) + struct.pack("<I", len(info)) + info
    body += struct.pack("<I", len(CASES))
    for name, group in CASES:
        blob, clipped = case(name, group, gen)
        print(f"{name} group {group}: {clipped} of {ROWS * ROW_LEN} weights clipped")
        body += blob
    body += b"END\0"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(body)
    print(f"wrote {out} ({len(body)} bytes)")


if __name__ == "__main__":
    main()
