#!/usr/bin/env python3
"""Generate the block-codec fixtures for kernels-cpu's quant tests (kernels-cpu/tests/quant.rs).

llama.cpp itself is the oracle: its `ggml_quantize_chunk` (reached through ctypes in the prebuilt
`xllamacpp` wheel, llama.cpp b11549; no imatrix, so the `quantize_row_*_ref` reference quantizers
run) quantizes every fixture row, and `gguf.quants.dequantize` (gguf-py, numpy) dequantizes
llama.cpp's bytes. The script also checks that ggml's own `dequantize_row_*` agrees bit for bit with
gguf's numpy dequantizer on every row (both are references; the Rust test compares with gguf's).

Rows: random rows of eight distributions at row length 256, half of them at 512 and 768 (all
types), all of them at 32, 64 and 96 (32-value block types and F32/F16/BF16 only), plus special rows
of length 256: all-zero, constant, tiny (1e-30, 1e-12 scale), subnormal, huge and outlier rows, rows
of exact ties (half-integer grids, Q8_0 `roundf` ties, Q4_0/Q5_0 truncation ties, ties inside the
K-quant scale searches, and one row per K-quant crafted with llama.cpp's own output so that values sit
on exact .5 ties of the final requantization), a row with inf and NaN among normal values (all types:
llama.cpp accepts them, and its bytes must still be matched), and an F32/F16/BF16-only row of float edge cases (inf,
NaN payloads, f16 overflow and subnormal boundaries, f16 and bf16 rounding ties). Bulk rows (2048 x 256
per type) are checked by digest only (see below).

Output: one little-endian binary file (default kernels-cpu/tests/fixtures/quant/ggml_ref.bin):

  magic     8 bytes  b"MMQUANT\\0"
  version   u32      1
  info      u32 length + utf-8 text ("key: value" lines: format, version, regenerate, versions)
  n_rows    u32
  row       u16 name length + name, u32 row_len, f32[row_len] values            (n_rows times)
  n_entries u32
  entry     u32 ggml type id, u32 row index, u32 byte length + llama.cpp's bytes,
            f32[row_len] gguf's dequantization of those bytes                   (n_entries times)
  n_bulk    u32
  bulk      u32 ggml type id, u32 rows, u32 row_len, u64 seed, u64 digest of the inputs,
            u64 digest of llama.cpp's bytes, u64 digest of gguf's dequantization  (n_bulk times)
  end       4 bytes  b"END\\0"

Bulk rows are too many to store (BULK_ROWS x BULK_ROW_LEN values per type), so only digests are:
the inputs come from a counter-based generator that the Rust test reimplements (`bulk_inputs`:
splitmix64 mixing, f32 arithmetic only), with per-row power-of-two scales, per-block scales,
outliers and positive / negative / sparse rows; digest = wrapping sum of mix64((i << 8) | byte_i)
over the bytes, and of mix64((i << 32) | bits_i) over the f32 values.

Regenerate (from the repository root; byte-identical output on rerun):
    pyenv/bin/pip install -r tools/requirements.txt
    pyenv/bin/python tools/gen_quant_fixtures.py
Options: --out FILE.
"""

import argparse
import ctypes
import importlib.metadata
import os
import struct
import sys

import numpy as np
import gguf
from gguf.quants import dequantize

GENERATOR = "tools/gen_quant_fixtures.py"
REGENERATE = "pyenv/bin/python tools/gen_quant_fixtures.py"
DEFAULT_OUT = "kernels-cpu/tests/fixtures/quant/ggml_ref.bin"
MAGIC = b"MMQUANT\0"
VERSION = 1
MAX_BYTES = 1_000_000
SEED = 20261206
QK_K = 256

# (name, ggml type id, block size, bytes per block, ggml dequantize_row symbol or None)
TYPES = [
    ("F32", 0, 1, 4, None),
    ("F16", 1, 1, 2, None),
    ("BF16", 30, 1, 2, None),
    ("Q4_0", 2, 32, 18, "dequantize_row_q4_0"),
    ("Q5_0", 6, 32, 22, "dequantize_row_q5_0"),
    ("Q5_1", 7, 32, 24, "dequantize_row_q5_1"),
    ("Q8_0", 8, 32, 34, "dequantize_row_q8_0"),
    ("Q4_K", 12, 256, 144, "dequantize_row_q4_K"),
    ("Q5_K", 13, 256, 176, "dequantize_row_q5_K"),
    ("Q6_K", 14, 256, 210, "dequantize_row_q6_K"),
]
FLOAT_TYPES = {"F32", "F16", "BF16"}
ALL_DISTS = ("normal_a", "normal_b", "block_scales", "uniform", "laplace", "positive", "negative", "sparse")
# Longer rows keep half of the distributions each (the file stays well under MAX_BYTES).
KEEP = {
    512: ("normal_a", "block_scales", "laplace", "sparse"),
    768: ("normal_b", "uniform", "positive", "negative"),
}


def find_ggml_library():
    """The shared library inside the xllamacpp wheel that exports ggml_quantize_chunk."""
    import xllamacpp

    pkg_dir = os.path.dirname(xllamacpp.__file__)
    candidates = sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(pkg_dir)
        for f in files
        if ".so" in f
    )
    for path in candidates:
        lib = ctypes.CDLL(path)
        if hasattr(lib, "ggml_quantize_chunk"):
            return path, lib
    sys.exit(f"no shared library exporting ggml_quantize_chunk under {pkg_dir}: {candidates}")


def bind(lib):
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    for _, _, _, _, sym in TYPES:
        if sym:
            f = getattr(lib, sym)
            f.restype = None
            f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]


def ggml_quantize(lib, type_id, rows):
    """llama.cpp's bytes for `rows` ([nrows, n_per_row] float32), one ggml_quantize_chunk call."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    nrows, n_per_row = rows.shape
    row_size = lib.ggml_row_size(type_id, n_per_row)
    dst = np.zeros(nrows * row_size, dtype=np.uint8)
    written = lib.ggml_quantize_chunk(type_id, rows.ctypes.data, dst.ctypes.data, 0, nrows, n_per_row, None)
    assert written == nrows * row_size, (type_id, written, nrows * row_size)
    return dst.reshape(nrows, row_size)


def ggml_dequantize(lib, sym, qrow, n):
    out = np.zeros(n, dtype=np.float32)
    qrow = np.ascontiguousarray(qrow)
    getattr(lib, sym)(qrow.ctypes.data, out.ctypes.data, n)
    return out


def random_rows(rng, n):
    """Rows of length n from several distributions, each name -> float32 row."""
    nb = n // 32
    blk_scale = np.repeat(10.0 ** rng.uniform(-3, 1, nb), 32)[:n] if nb else 1.0
    sparse = rng.standard_normal(n) * (rng.random(n) < 0.3)
    return [
        ("normal_a", 0.02 * rng.standard_normal(n)),
        ("normal_b", rng.standard_normal(n)),
        ("block_scales", rng.standard_normal(n) * blk_scale),
        ("uniform", rng.uniform(-1, 1, n)),
        ("laplace", rng.laplace(0, 0.05, n)),
        ("positive", np.abs(rng.standard_normal(n)) + 0.1),
        ("negative", -np.abs(rng.standard_normal(n)) - 0.1),
        ("sparse", sparse),
    ]


def special_rows(rng):
    n = 256
    g = rng.standard_normal(n)
    outlier = 0.02 * rng.standard_normal(n)
    idx = rng.choice(n, 6, replace=False)
    outlier[idx] = rng.choice([-1, 1], 6) * rng.uniform(2, 40, 6)
    mixed = g.copy()
    mixed[32:64] *= 1e-30  # a tiny block next to normal ones
    mixed[128:160] = 0.0
    # Q8_0 roundf ties: amax 127 -> d = 1, id = 1, so x + 0.5 steps are exact ties.
    q8_ties = rng.integers(-126, 126, n) + 0.5
    q8_ties[::32] = 127.0
    # Q4_0/Q5_0 scale -8/-16 with x.5 steps (truncation after + 8.5 / + 16.5)
    q5_ties = rng.integers(-15, 15, n) + 0.5
    q5_ties[::32] = -16.0
    # Exact ties inside the K-quant scale searches: with a block's min -16 and max 15 (Q5_K), or
    # -8 and 7 (Q4_K), the first inverse scale nmax/(max-min) is exactly 1, and so is the search
    # step with rmin + rdelta*is == 0; half-integer offsets from the min are then exact ties for
    # nearest_int. Q6_K: a -32 in every 16 values makes -nmax/max exactly 1.
    def search_ties(lo, hi, block):
        v = rng.integers(0, hi - lo, n) + 0.5 + lo
        v[::block] = lo
        v[1::block] = hi
        return v
    # Garbage in: inf and NaN among normal values (llama.cpp does not reject them; neither do we,
    # and the bytes must still be llama.cpp's).
    nonfinite = 0.1 * rng.standard_normal(n)
    nonfinite[[3, 40, 77]] = np.inf
    nonfinite[[100, 150]] = -np.inf
    nonfinite[[5, 64, 130, 200, 255]] = np.nan
    q6k_search = rng.integers(-31, 31, n) + 0.5
    q6k_search[::16] = -32.0
    return [
        ("zeros", np.zeros(n)),
        ("constant_pos", np.full(n, 0.5)),
        ("constant_neg", np.full(n, -3.0)),
        ("tiny_1e-30", 1e-30 * g),
        ("tiny_1e-12", 1e-12 * rng.standard_normal(n)),
        ("subnormal", 1e-41 * rng.standard_normal(n)),
        ("huge_1e4", 1e4 * rng.standard_normal(n)),
        ("huge_1e20", 1e20 * rng.standard_normal(n)),
        ("outliers", outlier),
        ("mixed_blocks", mixed),
        ("half_int_grid", rng.integers(-63, 64, n) / 2.0),
        ("int_grid", rng.integers(-31, 32, n).astype(np.float64)),
        ("q8_ties", q8_ties),
        ("q5_ties", q5_ties),
        ("q5k_search_ties", search_ties(-16, 15, 32)),
        ("q4k_search_ties", search_ties(-8, 7, 32)),
        ("q6k_search_ties", q6k_search),
        ("nonfinite", nonfinite),
    ]


def float_special_row():
    """F32/F16/BF16 only: values at conversion edges (read from bit patterns where needed)."""
    bits = [
        0x7F800000, 0xFF800000,  # +-inf
        0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA12345, 0xFFBFFFFF,  # NaNs (quiet, signalling, payloads)
        0x00000001, 0x80000001, 0x00400000, 0x007FFFFF, 0x00800000,  # f32 subnormals, min normal
        0x3F808000, 0x3F818000, 0x3F80C000,  # bf16 ties to even (down, up) and above a tie
        0x3F801000, 0x3F803000, 0x3F801001,  # f16 ties to even (down, up) and just above
        0x7F7FFFFF, 0xFF7FFFFF,  # f32 max
        0x7F7F8000, 0x7F7F7FFF,  # bf16: rounds to inf / to max
    ]
    vals = [
        65504.0, -65504.0, 65519.99, 65520.0, 70000.0,  # f16 max, ties to inf, overflow
        6.103515625e-05, 6.0975552e-05, 5.9604645e-08, 2.9802322e-08, 2.9802326e-08,  # f16 min normal/subnormal edges
        8.940697e-08, 1.0, -1.0, 0.0, -0.0, 0.1, -0.3, 3.14159265, 1e-3, 12345.678,
    ]
    while len(bits) + len(vals) < 64:
        vals.append(float(len(vals)) * 0.173)
    # Kept as bit patterns throughout: a float64 round trip would quiet the signalling NaNs.
    u = np.concatenate([np.array(bits, dtype=np.uint32), np.array(vals, dtype=np.float32).view(np.uint32)])
    return ("float_specials", u)


def k_subblocks(tname, q):
    """(d_eff, dm_eff, pinned) of every sub-block of one K-quant block, as the requantization
    step of quantize_row_*_ref uses them (f32 products of the stored f16 and 6/8-bit scales).
    `pinned` marks the sub-blocks that set the super-block scales (editing them moves d)."""
    f16 = lambda b: np.frombuffer(bytes(b), dtype=np.float16).astype(np.float32)[0]
    if tname == "Q6_K":
        d = f16(q[208:210])
        sc = np.frombuffer(bytes(q[192:208]), dtype=np.int8)
        return [(np.float32(d * np.float32(s)), np.float32(0), s in (-128, 127)) for s in sc]
    d, dmin, s = f16(q[0:2]), f16(q[2:4]), q[4:16]
    out = []
    for j in range(8):
        if j < 4:
            sc, m = s[j] & 63, s[j + 4] & 63
        else:
            sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4)
            m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4)
        out.append((np.float32(d * np.float32(sc)), np.float32(dmin * np.float32(m)), sc == 63 or m == 63))
    return out


def requant_ties(tname, x, q):
    """How many values hit an exact .5 in the final nearest_int((x + dm)/d) of a K-quant block."""
    subs = k_subblocks(tname, q)
    size = QK_K // len(subs)
    n = 0
    for j, (d, dm, _) in enumerate(subs):
        if d == 0:
            continue
        r = ((x[size * j:size * (j + 1)] + dm) / d).astype(np.float32)
        n += int(np.sum(np.abs(r - np.floor(r)) == 0.5))
    return n


def craft_requant_ties(lib, tname, tid, edits=3, rounds=6, want=8):
    """A random row whose small values are moved onto exact ties of the final requantization
    (half-way between two levels of the stored scale), iterated with llama.cpp's own output
    until the scales settle. The sub-blocks that set d/dmin are left alone. Own seeded stream, and
    the first of up to 20 candidate rows with at least `want` ties."""
    rng = np.random.default_rng(SEED + tid)
    for _ in range(20):
        x = rng.standard_normal(QK_K).astype(np.float32)
        for _ in range(rounds):
            q = ggml_quantize(lib, tid, x.reshape(1, -1))[0]
            subs = k_subblocks(tname, q)
            size = QK_K // len(subs)
            for j, (d, dm, pinned) in enumerate(subs):
                if d == 0 or pinned:
                    continue
                blk = x[size * j:size * (j + 1)]
                for p in np.argsort(np.abs(blk), kind="stable")[:edits]:
                    r = np.floor((blk[p] + dm) / d)
                    blk[p] = np.float32(np.float32((r + np.float32(0.5)) * d) - dm)
        ties = requant_ties(tname, x, ggml_quantize(lib, tid, x.reshape(1, -1))[0])
        if ties >= want:
            return x, ties
    sys.exit(f"{tname}: no candidate row reached {want} requantization ties")


GOLDEN = np.uint64(0x9E3779B97F4A7C15)
TAG_ROW = np.uint64(0x524F57)
TAG_BLOCK = np.uint64(0x424C4B)
BULK_ROWS = 2048
BULK_ROW_LEN = 256


def mix64(z):
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def counter(seed, tag, k):
    """Value k of the stream (seed, tag): mix64((seed ^ tag) + (k + 1) * GOLDEN)."""
    return mix64((np.uint64(seed) ^ tag) + (k.astype(np.uint64) + np.uint64(1)) * GOLDEN)


def bulk_inputs(seed, rows, row_len):
    """The bulk rows (mirrored by `bulk_inputs` in kernels-cpu/tests/quant.rs; f32 math only)."""
    i = np.arange(rows * row_len, dtype=np.uint64)
    u = counter(seed, np.uint64(0), i)
    ru = counter(seed, TAG_ROW, i // np.uint64(row_len))
    bu = counter(seed, TAG_BLOCK, i // np.uint64(32))
    two_m24 = np.float32(2.0**-24)
    v = (u >> np.uint64(40)).astype(np.float32) * two_m24 * np.float32(2) - np.float32(1)
    v = np.where((u & np.uint64(0xFF)) == 0, v * np.float32(16), v)
    bs = (bu >> np.uint64(40)).astype(np.float32) * two_m24 * np.float32(7) + np.float32(1)
    e = (ru % np.uint64(15)).astype(np.int32) - 10
    rs = np.ldexp(np.float32(1), e).astype(np.float32)
    x = (v * bs) * rs
    mode = (ru >> np.uint64(8)) % np.uint64(4)
    x = np.where(mode == 1, np.abs(x), x)
    x = np.where(mode == 2, -np.abs(x), x)
    x = np.where((mode == 3) & (((u >> np.uint64(8)) & np.uint64(3)) != 0), np.float32(0), x)
    assert x.dtype == np.float32
    return x.reshape(rows, row_len)


def digest_bytes(b):
    i = np.arange(len(b), dtype=np.uint64)
    return int(np.sum(mix64((i << np.uint64(8)) | np.frombuffer(b, dtype=np.uint8).astype(np.uint64)), dtype=np.uint64))


def digest_f32(v):
    i = np.arange(v.size, dtype=np.uint64)
    bits = np.ascontiguousarray(v, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    return int(np.sum(mix64((i << np.uint64(32)) | bits), dtype=np.uint64))


def build_bulk(lib):
    out = []
    for k, (tname, tid, _, _, _) in enumerate(TYPES):
        seed = SEED + 1000 + k
        x = bulk_inputs(seed, BULK_ROWS, BULK_ROW_LEN)
        q = ggml_quantize(lib, tid, x).tobytes()
        with np.errstate(all="ignore"):
            deq = np.asarray(dequantize(np.frombuffer(q, dtype=np.uint8).reshape(BULK_ROWS, -1), gguf.GGMLQuantizationType[tname]), dtype=np.float32)
        out.append((tid, BULK_ROWS, BULK_ROW_LEN, seed, digest_f32(x), digest_bytes(q), digest_f32(deq)))
    return out


def build_rows(lib):
    rng = np.random.default_rng(SEED)
    rows = []  # (name, float32 array)
    for n in (256, 512, 768, 32, 64, 96):
        for name, v in random_rows(rng, n):
            if name in KEEP.get(n, ALL_DISTS):
                rows.append((f"{name}_{n}", np.asarray(v, dtype=np.float32)))
    for name, v in special_rows(rng):
        rows.append((name, np.asarray(v, dtype=np.float32)))
    ties = {}
    for tname, tid in (("Q6_K", 14), ("Q5_K", 13), ("Q4_K", 12)):
        x, ties[tname] = craft_requant_ties(lib, tname, tid)
        rows.append((f"{tname.lower()}_requant_ties", x))
    name, u = float_special_row()
    rows.append((name, u.view(np.float32)))
    return rows, ties


def applies(tname, block, row_name, n):
    if row_name == "float_specials":
        return tname in FLOAT_TYPES
    return n % block == 0


def bits_equal(a, b):
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32), np.asarray(b, np.float32).view(np.uint32))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    lib_path, lib = find_ggml_library()
    bind(lib)
    rows, ties = build_rows(lib)
    with np.errstate(over="ignore"):
        bulk = build_bulk(lib)

    entries = []  # (type id, row index, bytes, dequant f32)
    stats = {}
    for tname, tid, block, bpb, sym in TYPES:
        gtype = gguf.GGMLQuantizationType[tname]
        n_rows = n_deq_checked = 0
        for ri, (rname, v) in enumerate(rows):
            n = v.shape[0]
            if not applies(tname, block, rname, n):
                continue
            q = ggml_quantize(lib, tid, v.reshape(1, n))[0]
            assert q.shape[0] == n // block * bpb, (tname, rname)
            with np.errstate(all="ignore"):
                deq = np.asarray(dequantize(q, gtype), dtype=np.float32).reshape(-1)
            assert deq.shape[0] == n
            if sym:
                with np.errstate(all="ignore"):
                    ref = ggml_dequantize(lib, sym, q, n)
                if not bits_equal(ref, deq):
                    bad = np.flatnonzero(ref.view(np.uint32) != deq.view(np.uint32))
                    sys.exit(f"{tname} {rname}: ggml and gguf dequantization differ at {bad[:8]}")
                n_deq_checked += 1
            entries.append((tid, ri, q.tobytes(), deq))
            n_rows += 1
        # Batched call: same bytes as row by row (rows are independent in ggml too).
        for n in sorted({v.shape[0] for rn, v in rows if applies(tname, block, rn, v.shape[0])}):
            group = [(ri, v) for ri, (rn, v) in enumerate(rows) if v.shape[0] == n and applies(tname, block, rn, n)]
            batch = ggml_quantize(lib, tid, np.stack([v for _, v in group]))
            singles = {ri: q for (t, ri, q, _) in entries if t == tid}
            for (ri, _), qb in zip(group, batch):
                assert qb.tobytes() == singles[ri], (tname, ri)
        stats[tname] = (n_rows, n_deq_checked)

    versions = {
        "xllamacpp": importlib.metadata.version("xllamacpp"),
        "gguf": importlib.metadata.version("gguf"),
        "numpy": np.__version__,
    }
    info_lines = [
        "format: medmoe-quant-fixture",
        f"version: {VERSION}",
        f"generator: {GENERATOR}",
        f"regenerate: {REGENERATE}",
        f"seed: {SEED}",
        f"oracle: ggml_quantize_chunk (imatrix NULL) from {os.path.basename(lib_path)}; gguf.quants.dequantize",
    ] + [f"{k}: {v}" for k, v in versions.items()] + [
        f"rows.{t}: {stats[t][0]} (ggml dequantize_row cross-checked: {stats[t][1]})" for t in stats
    ] + [f"requant_ties.{t}: {n} exact .5 ties in row {t.lower()}_requant_ties" for t, n in ties.items()]
    info = ("\n".join(info_lines) + "\n").encode()

    out = bytearray()
    out += MAGIC + struct.pack("<I", VERSION) + struct.pack("<I", len(info)) + info
    out += struct.pack("<I", len(rows))
    for name, v in rows:
        nb = name.encode()
        out += struct.pack("<H", len(nb)) + nb + struct.pack("<I", v.shape[0]) + v.astype("<f4").tobytes()
    out += struct.pack("<I", len(entries))
    for tid, ri, q, deq in entries:
        out += struct.pack("<III", tid, ri, len(q)) + q + deq.astype("<f4").tobytes()
    out += struct.pack("<I", len(bulk))
    for tid, nrows, row_len, seed, dx, dq, dd in bulk:
        out += struct.pack("<IIIQQQQ", tid, nrows, row_len, seed, dx, dq, dd)
    out += b"END\0"
    if len(out) > MAX_BYTES:
        sys.exit(f"fixture would be {len(out)} bytes > {MAX_BYTES}")

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(out)
    os.replace(tmp, args.out)
    print(info.decode(), end="")
    print(f"wrote {args.out}: {len(rows)} rows, {len(entries)} entries, {len(bulk)} bulk digests "
          f"({BULK_ROWS} rows of {BULK_ROW_LEN} per type), {len(out)} bytes")


if __name__ == "__main__":
    main()
