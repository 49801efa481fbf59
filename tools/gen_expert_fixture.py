#!/usr/bin/env python3
"""Generate the named-expert export fixture: transformers' Qwen3ForCausalLM on `moe-cli export expert`.

Drives the real CLI, as a user would:

  1. `moe-cli upcycle` turns the committed dense fixture tests/fixtures/qwen3_untied_b into a MoE
     (4 routed experts, a shared copy, Drop-Upcycling 0.5 so the experts differ, seed 3);
  2. sets every layer's `e_score_correction_bias` to FORCE on expert EXPERT (0 elsewhere), so every
     token is routed to that expert in every layer (the bias only decides the choice; the routed
     weight stays 1 under `ste`);
  3. `moe-cli export expert --expert EXPERT` writes shared + expert EXPERT as one dense Qwen3;
  4. loads the export with transformers `Qwen3ForCausalLM` (float32, eager attention), requiring no
     missing / unexpected / mismatched keys and no warning, runs it on fixed input ids, and requires
     `moe-cli logits` of the MoE (every token routed to EXPERT, so every position must match) and of
     the export to agree with it (<= 1e-4).

It writes tests/fixtures/expert_forced_a/reference.safetensors:

  input_ids   [B,T]    int32
  logits      [B,T,V]  f32     transformers Qwen3ForCausalLM(input_ids).logits on the export

`__metadata__` (sorted keys): format = medmoe-fixture, version = 1, generator, regenerate,
transformers, torch, case, and what tests/expert_export.rs needs to rebuild the same MoE in-process:
dense (fixture name), experts, shared, drop, seed, expert, force_bias, plus `sha256.<file>` of the
exported config.json and model.safetensors (the Rust test must export the same bytes) and the CLI's
max abs diffs (informative).

Regenerate (from the repository root; builds moe-cli in release mode first):
    pyenv/bin/python tools/gen_expert_fixture.py
Options: --out DIR (default tests/fixtures), --cli PATH (skip the build), --keep DIR (a new
directory to keep the MoE and the export in).
"""

import argparse
import hashlib
import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import Qwen3ForCausalLM  # noqa: E402

GENERATOR = "tools/gen_expert_fixture.py"
REGENERATE = "pyenv/bin/python tools/gen_expert_fixture.py"
TOL = 1e-4
CASE = dict(name="expert_forced_a", dense="qwen3_untied_b", experts=4, shared="copy", drop=0.5, seed=3,
            expert=2, force_bias=4.0, batch=3, seq=13, ids_seed=41)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return r.stderr


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_clean(d):
    """from_pretrained in f32 / eager; fails on any missing, unexpected or mismatched key or warning."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logging.getLogger("transformers").addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, info = Qwen3ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                                       output_loading_info=True)
    logging.getLogger("transformers").removeHandler(handler)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"{d}: loading info {bad}"
    problems = [str(w.message) for w in caught] + ([buf.getvalue()] if buf.getvalue() else [])
    assert not problems, f"{d}: warnings while loading: {problems}"
    assert type(model) is Qwen3ForCausalLM, type(model)
    return model.eval()


def cli_logits(cli, model_dir, ids, work, name):
    out = os.path.join(work, f"{name}.safetensors")
    rows = ";".join(",".join(str(int(t)) for t in row) for row in ids)
    run([cli, "--threads", "2", "logits", "--model", model_dir, "--ids", rows, "--out", out])
    with safe_open(out, framework="pt") as f:
        return f.get_tensor("logits")


def canonicalize_metadata(path):
    """Rewrite the header with sorted metadata keys (same length) for byte-identical reruns."""
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        meta = header.pop("__metadata__")
        new = {"__metadata__": dict(sorted(meta.items()))}
        new.update(header)
        text = json.dumps(new, separators=(",", ":"), ensure_ascii=False).encode()
        assert len(text) <= n, (len(text), n)
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def generate(c, cli, out_root, work):
    dense_dir = os.path.join("tests", "fixtures", c["dense"])
    moe_dir, export_dir = os.path.join(work, "moe"), os.path.join(work, "expert")
    run([cli, "--threads", "1", "upcycle", "--model", dense_dir, "--experts", str(c["experts"]),
         "--shared", c["shared"], "--drop", str(c["drop"]), "--seed", str(c["seed"]), "--out", moe_dir])
    config = json.load(open(os.path.join(moe_dir, "config.json")))
    path = os.path.join(moe_dir, "model.safetensors")
    tensors = load_file(path)
    for layer in range(config["num_hidden_layers"]):
        key = f"model.layers.{layer}.mlp.gate.e_score_correction_bias"
        assert key in tensors and tensors[key].abs().sum() == 0, key
        bias = torch.zeros(c["experts"], dtype=torch.float32)
        bias[c["expert"]] = c["force_bias"]
        tensors[key] = bias
    save_file(tensors, path)
    print(run([cli, "--threads", "1", "export", "expert", "--model", moe_dir, "--expert", str(c["expert"]),
               "--out", export_dir]).strip())
    files = sorted(f for f in os.listdir(export_dir) if f in ("config.json", "model.safetensors"))
    assert files == ["config.json", "model.safetensors"], os.listdir(export_dir)
    exported = json.load(open(os.path.join(export_dir, "config.json")))
    assert exported["intermediate_size"] == 2 * config["intermediate_size"], exported["intermediate_size"]

    model = load_clean(export_dir)
    g = torch.Generator().manual_seed(c["ids_seed"])
    input_ids = torch.randint(0, config["vocab_size"], (c["batch"], c["seq"]), generator=g)
    with torch.no_grad():
        logits = model(input_ids).logits.float().contiguous()
    diffs = {}
    for src, d in [("moe", moe_dir), ("export", export_dir)]:
        ours = cli_logits(cli, d, input_ids.tolist(), work, src)
        diffs[src] = float((ours - logits).abs().max())
        assert diffs[src] <= TOL, f"moe-cli logits on the {src} differ by {diffs[src]:.3e} > {TOL}"
    meta = {
        "format": "medmoe-fixture", "version": "1", "generator": GENERATOR, "regenerate": REGENERATE,
        "transformers": transformers.__version__, "torch": torch.__version__, "case": c["name"],
        "dense": c["dense"], "experts": str(c["experts"]), "shared": c["shared"], "drop": str(c["drop"]),
        "seed": str(c["seed"]), "expert": str(c["expert"]), "force_bias": str(c["force_bias"]),
        "cli_max_abs_diff_moe": f"{diffs['moe']:.3e}", "cli_max_abs_diff_export": f"{diffs['export']:.3e}",
    }
    for f in files:
        meta[f"sha256.{f}"] = sha256(os.path.join(export_dir, f))
    d = os.path.join(out_root, c["name"])
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    ref = os.path.join(d, "reference.safetensors")
    save_file({"input_ids": input_ids.to(torch.int32).contiguous(), "logits": logits}, ref, metadata=meta)
    canonicalize_metadata(ref)
    with safe_open(ref, framework="pt") as f:
        assert f.metadata() == meta
    print(f"{c['name']}: transformers Qwen3ForCausalLM on the expert export vs moe-cli logits: "
          f"MoE (all routed to {c['expert']}) {diffs['moe']:.3e}, export {diffs['export']:.3e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--cli", default="", help="moe-cli binary (default: cargo build --release -p cli)")
    ap.add_argument("--keep", default="", help="keep the MoE and the export in this new directory")
    args = ap.parse_args()
    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    cli = args.cli
    if not cli:
        subprocess.run(["cargo", "build", "--release", "-p", "cli"], check=True)
        cli = os.path.join("target", "release", "moe-cli")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, cli {cli}")
    work = args.keep or tempfile.mkdtemp(prefix="expert-fixture-")
    if args.keep:
        os.makedirs(work)
    try:
        generate(CASE, cli, args.out, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
