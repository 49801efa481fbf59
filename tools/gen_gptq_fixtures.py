#!/usr/bin/env python3
"""Generate the GPTQ fixtures: a float64 numpy transcription of the reference GPTQ is the oracle.

Part `algo` (kernels-cpu/tests/fixtures/gptq/algo.safetensors): the reference algorithm,
transcribed line by line from AutoGPTQ 0.7.1 `GPTQ.fasterquant` / IST-DASLab `gptq.py` and their
`Quantizer` (sym=True, perchannel, non-static groups, blocksize 128, percdamp 0.01), run in float64
(the reference runs in float32) on one fixed layer:

  w        [N=48, K=256] f32  weights (normal * 0.05, four outlier columns x 4)
  x_u8     [T=320, K]    u8   calibration inputs x = (x_u8 - 64) / 16: correlated features rounded to
                              multiples of 1/16 in [-4, 4], column 5 all zero (a dead column), so
                              X^T X is exact in f32 and f64 alike and H = (X^T X) * (2/T) is the same
                              bits in Rust and here
  per case `b{bits}_g{group}_{ao|no}` (act-order on/off; bits 4 with groups 32, 64, 128 and bits 8
  with group 128):
    codes_<case>   [N, K]    u8   integer codes (original column order)
    scales_<case>  [K/G, N]  f32  group scales (f64 rounded to f32)
    g_idx_<case>   [K]       i32
  per group size: rtn_codes_g{G}, rtn_scales_g{G} (round-to-nearest, 4 bits)
  metadata: loss_<case> (the reference's sum of Losses), outerr_<case> / rtn_outerr_g{G} (the output
  error tr((W-W') H (W-W')^T) with the dequantized W' = scale * (q - zero), f64 scales), ties_<case>
  (codes whose w/scale was within 1e-9 of a .5 rounding boundary).

Part `moe` (tests/fixtures/gptq/moe_*): drives the real CLI, as a user would:
  1. `moe-cli surgery` of the committed dense fixture qwen3_tied_a into a small MoE (4 experts x 32,
     shared 32, router `ste`; deleted after step 3);
  2. fixed calibration ids (calib.safetensors, input_ids [4, 48] i64);
  3. `moe-cli quantize --method gptq --bits 4 --group 32 --act-order` -> tests/fixtures/gptq/moe_gptq/;
  4. the checkpoint dequantized here in numpy (v1 zeros: W = scale * (q - (z + 1))), written as a plain
     Dots1 checkpoint in a temporary directory, loaded by transformers Dots1ForCausalLM (float32,
     eager attention), run on fixed ids: reference.safetensors holds input_ids [2, 16] i64 and logits
     [2, 16, V] f32, and the format checks of the checkpoint (shapes, dtypes, sym zeros, config keys)
     run here too.

Regenerate (from the repository root):
    pyenv/bin/python tools/gen_gptq_fixtures.py            # both parts (builds moe-cli in release mode)
    pyenv/bin/python tools/gen_gptq_fixtures.py --only algo
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "2")
import numpy as np  # noqa: E402
from safetensors.numpy import save_file, load_file  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGO_OUT = os.path.join(ROOT, "kernels-cpu/tests/fixtures/gptq/algo.safetensors")
MOE_DIR = os.path.join(ROOT, "tests/fixtures/gptq")
REGEN = "pyenv/bin/python tools/gen_gptq_fixtures.py"


# ---- the reference, float64 ---------------------------------------------------------------------

def find_params(x, maxq):
    """Quantizer.find_params(x, weight=True) with sym=True, perchannel=True; x [N, G]."""
    xmin = np.minimum(x.min(1), 0.0)
    xmax = np.maximum(x.max(1), 0.0)
    xmax = np.maximum(np.abs(xmin), xmax)
    tmp = xmin < 0
    xmin[tmp] = -xmax[tmp]
    tmp = (xmin == 0) & (xmax == 0)
    xmin[tmp] = -1.0
    xmax[tmp] = 1.0
    scale = (xmax - xmin) / maxq
    zero = np.full_like(scale, (maxq + 1) / 2)
    return scale, zero


def quantize(x, scale, zero, maxq):
    """The reference `quantize`: torch.round is half-to-even, as np.round."""
    q = np.clip(np.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero), q


def fasterquant(W, H, bits, group, actorder, blocksize=128, percdamp=0.01):
    W = W.astype(np.float64).copy()
    H = H.copy()
    N, K = W.shape
    maxq = 2 ** bits - 1
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = np.arange(K)
    if actorder:
        perm = np.argsort(-np.diag(H), kind="stable")
        W = W[:, perm]
        H = H[perm][:, perm]
    invperm = np.argsort(perm)
    Losses = np.zeros_like(W)
    Q = np.zeros_like(W)
    codes = np.zeros_like(W)
    damp = percdamp * np.mean(np.diag(H))
    H[np.arange(K), np.arange(K)] += damp
    L = np.linalg.cholesky(H)
    Linv = np.linalg.inv(L)
    Hinv = np.linalg.cholesky(Linv.T @ Linv).T  # torch.linalg.cholesky(cholesky_inverse(L), upper=True)
    scales = []
    ties = 0
    scale = zero = None
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        count = i2 - i1
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Losses1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if (i1 + i) % group == 0:
                scale, zero = find_params(W[:, (i1 + i):(i1 + i + group)], maxq)  # W, not W1
                scales.append(scale)
            r = w / scale
            ties += int(np.sum(np.abs(np.abs(r - np.floor(r)) - 0.5) < 1e-9))
            q, c = quantize(w, scale, zero, maxq)
            Q1[:, i] = q
            codes[:, i1 + i] = c
            Losses1[:, i] = (w - q) ** 2 / d ** 2
            err1 = (w - q) / d
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    g_idx = (np.arange(K) // group)[invperm]
    return codes[:, invperm], np.stack(scales), g_idx, Q[:, invperm], float(np.sum(Losses)), ties


def rtn(W, bits, group):
    W = W.astype(np.float64)
    maxq = 2 ** bits - 1
    N, K = W.shape
    codes = np.zeros_like(W)
    deq = np.zeros_like(W)
    scales = []
    for g0 in range(0, K, group):
        scale, zero = find_params(W[:, g0:g0 + group], maxq)
        scales.append(scale)
        for c in range(g0, g0 + group):
            deq[:, c], codes[:, c] = quantize(W[:, c], scale, zero, maxq)
    return codes, np.stack(scales), deq


def output_error(W, V, H):
    D = W.astype(np.float64) - V
    return float(np.sum((D @ H) * D))


# ---- part algo ----------------------------------------------------------------------------------

def gen_algo():
    rng = np.random.default_rng(20261207)
    N, K, T = 48, 256, 320
    W = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    W[:, [3, 77, 130, 201]] *= 4
    A = rng.standard_normal((K, K)) * 0.08 + np.eye(K)
    Z = rng.standard_normal((T, K)) * rng.uniform(0.3, 1.5, K)
    X = np.clip(np.round(16 * (Z @ A)) / 16, -4, 63 / 16)
    X[:, 5] = 0.0
    x_u8 = (X * 16 + 64).astype(np.uint8)
    X32 = ((x_u8.astype(np.float32) - 64) / 16).astype(np.float32)
    xtx = X32.astype(np.float64).T @ X32.astype(np.float64)
    assert np.all(np.abs(xtx) < 2 ** 24 / 256), "X^T X must be exact in f32"
    H = xtx * (2.0 / T)
    tensors = {"w": W, "x_u8": x_u8}
    meta = {
        "format": "medmoe-fixture", "version": "1", "generator": "tools/gen_gptq_fixtures.py",
        "regenerate": REGEN + " --only algo", "numpy": np.__version__,
        "reference": "AutoGPTQ 0.7.1 fasterquant / IST-DASLab gptq.py, sym, blocksize 128, percdamp 0.01, float64",
    }
    for g in (32, 64, 128):
        codes, scales, deq = rtn(W, 4, g)
        tensors[f"rtn_codes_g{g}"] = codes.astype(np.uint8)
        tensors[f"rtn_scales_g{g}"] = scales.astype(np.float32)
        meta[f"rtn_outerr_g{g}"] = repr(output_error(W, deq, H))
    for bits, g in ((4, 32), (4, 64), (4, 128), (8, 128)):
        for ao in (False, True):
            case = f"b{bits}_g{g}_{'ao' if ao else 'no'}"
            codes, scales, g_idx, Q, loss, ties = fasterquant(W, H, bits, g, ao)
            tensors[f"codes_{case}"] = codes.astype(np.uint8)
            tensors[f"scales_{case}"] = scales.astype(np.float32)
            tensors[f"g_idx_{case}"] = g_idx.astype(np.int32)
            meta[f"loss_{case}"] = repr(loss)
            meta[f"outerr_{case}"] = repr(output_error(W, Q, H))
            meta[f"ties_{case}"] = str(ties)
            if bits == 4:
                rtn_err = float(meta[f"rtn_outerr_g{g}"])
                print(f"{case}: loss {loss:.6g} output error {output_error(W, Q, H):.6g} (RTN {rtn_err:.6g}) ties {ties}")
                assert output_error(W, Q, H) <= rtn_err
    os.makedirs(os.path.dirname(ALGO_OUT), exist_ok=True)
    # safetensors.numpy writes the raw buffer: make every array C-contiguous first.
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(tensors, ALGO_OUT, metadata=meta)
    print("wrote", ALGO_OUT)


# ---- part moe -----------------------------------------------------------------------------------

def build_cli():
    subprocess.run(["cargo", "build", "--release", "-p", "cli"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target/release/moe-cli")


def run(cli, *args):
    print("+ moe-cli", " ".join(args))
    subprocess.run([cli, *args], cwd=ROOT, check=True)


def dequantize_gptq(d, prefix, bits):
    """W [N, K] from qweight/qzeros/scales/g_idx with v1 zeros (stored zero = zero - 1)."""
    qweight, qzeros = d[prefix + ".qweight"].view(np.uint32), d[prefix + ".qzeros"].view(np.uint32)
    scales, g_idx = d[prefix + ".scales"].astype(np.float32), d[prefix + ".g_idx"]
    p = 32 // bits
    mask = (1 << bits) - 1
    shifts = np.arange(p, dtype=np.uint32) * bits
    q = ((qweight[:, None, :] >> shifts[None, :, None]) & mask).reshape(-1, qweight.shape[1])  # [K, N]
    z = ((qzeros[:, :, None] >> shifts[None, None, :]) & mask).reshape(qzeros.shape[0], -1) + 1  # [K/G, N]
    assert np.all(z == 2 ** (bits - 1)), "sym checkpoints store zero - 1 = 2^(bits-1) - 1"
    w = scales[g_idx] * (q.astype(np.float32) - z[g_idx].astype(np.float32))
    return w.T.copy()


def gen_moe(cli):
    import torch
    import transformers
    from transformers import Dots1ForCausalLM

    src, ckpt = os.path.join(MOE_DIR, "moe_src"), os.path.join(MOE_DIR, "moe_gptq")
    calib = os.path.join(MOE_DIR, "calib.safetensors")
    for p in (src, ckpt):
        shutil.rmtree(p, ignore_errors=True)
    os.makedirs(MOE_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        preset = os.path.join(tmp, "preset.json")
        dense_cfg = json.load(open(os.path.join(ROOT, "tests/fixtures/qwen3_tied_a/config.json")))
        dense_cfg.update(model_type="medmoe", architectures=["MedMoeForCausalLM"], moe={
            "num_experts": 4, "expert_width": 32, "shared_width": 32, "router_weighting": "ste"})
        json.dump(dense_cfg, open(preset, "w"), indent=2)
        run(cli, "surgery", "--model", "tests/fixtures/qwen3_tied_a", "--preset", preset, "--out", src)
    rng = np.random.default_rng(7)
    save_file({"input_ids": rng.integers(0, 256, (4, 48)).astype(np.int64)}, calib,
              metadata={"format": "medmoe-fixture", "version": "1", "regenerate": REGEN})
    run(cli, "quantize", "--method", "gptq", "--model", src, "--calib", calib, "--bits", "4", "--group", "32",
        "--act-order", "--out", ckpt)
    shutil.rmtree(src)  # reproducible from qwen3_tied_a; the tests need only the checkpoint
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    qc = cfg["quantization_config"]
    assert qc == json.load(open(os.path.join(ckpt, "quantize_config.json")))
    for k in ("scoring_func", "topk_method", "n_group", "topk_group", "head_dim"):
        assert k in cfg, k
    assert cfg["sliding_window"] is None and qc["sym"] and qc["bits"] == 4 and qc["desc_act"]
    d = load_file(os.path.join(ckpt, "model.safetensors"))
    plain = {}
    for name, t in d.items():
        if name.endswith(".qweight"):
            prefix = name[: -len(".qweight")]
            assert d[prefix + ".scales"].dtype == np.float16 and d[prefix + ".g_idx"].dtype == np.int32
            plain[prefix + ".weight"] = dequantize_gptq(d, prefix, qc["bits"])
        elif not name.endswith((".qzeros", ".scales", ".g_idx")):
            plain[name] = t.astype(np.float32)
    for i in range(cfg["num_hidden_layers"]):
        assert f"model.layers.{i}.mlp.gate.weight" in d, "the router stays float"
        for e in range(cfg["n_routed_experts"]):
            assert f"model.layers.{i}.mlp.experts.{e}.down_proj.qweight" in d, "per-expert keys"
    assert "model.embed_tokens.weight" in d and "model.norm.weight" in d
    hf_cfg = {k: v for k, v in cfg.items() if k != "quantization_config"}
    hf_cfg["dtype"] = "float32"
    with tempfile.TemporaryDirectory() as tmp:
        json.dump(hf_cfg, open(os.path.join(tmp, "config.json"), "w"), indent=2)
        save_file({k: np.ascontiguousarray(v) for k, v in plain.items()}, os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        model, info = Dots1ForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager",
                                                       output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, bad
    model.eval()
    ids = np.random.default_rng(11).integers(0, 256, (2, 16)).astype(np.int64)
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)).logits.float().numpy()
    save_file({"input_ids": ids, "logits": logits}, os.path.join(MOE_DIR, "reference.safetensors"), metadata={
        "format": "medmoe-fixture", "version": "1", "generator": "tools/gen_gptq_fixtures.py", "regenerate": REGEN,
        "transformers": transformers.__version__, "torch": torch.__version__,
    })
    print("wrote", MOE_DIR)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["algo", "moe"])
    ap.add_argument("--cli", help="moe-cli binary (skip the build)")
    a = ap.parse_args()
    if a.only in (None, "algo"):
        gen_algo()
    if a.only in (None, "moe"):
        gen_moe(a.cli or build_cli())


if __name__ == "__main__":
    sys.exit(main())
