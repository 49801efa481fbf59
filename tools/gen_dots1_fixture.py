#!/usr/bin/env python3
"""Generate the Dots1 export fixtures: transformers' Dots1ForCausalLM on our export is the oracle.

For every case this drives the real CLI, exactly as a user would:

  1. `moe-cli surgery` turns a committed dense Qwen3 fixture (tests/fixtures/<dense>/) into a
     medmoe MoE (shared expert + top-1 routed experts) from a preset written here;
  2. for the sigmoid-router case, sets every layer's `e_score_correction_bias` to a fixed pattern
     (bias[l][e] = ((3*l + 5*e) % 7 - 3) / 128, exact in f32) in that MoE checkpoint;
  3. `moe-cli export hf --format dots1` writes the Hugging Face export;
  4. loads the export with transformers `Dots1ForCausalLM` (float32, eager attention), requiring
     no missing / unexpected / mismatched keys and no warning, runs it on fixed input ids, and
     cross-checks `moe-cli logits` on both the MoE checkpoint and the export (<= 1e-4).

The `dots1_init_*` cases are one per `--router-init` value, each a fresh conversion with the CLI's
default split, fill and seed: a freshly converted model must export to something that computes what
we compute (an all-zero router, the removed `zeros` init, tied every expert and transformers broke the
ties differently: 0.37 max abs). For every case the script also requires that no token's top-2 router
scores in transformers are closer than MIN_SCORE_GAP (a near-tie could round either way), and stores
the smallest gap it saw.

It writes tests/fixtures/<case>/reference.safetensors:

  input_ids   [B,T]    int32
  logits      [B,T,V]  f32     transformers Dots1ForCausalLM(input_ids).logits on the export

`__metadata__` (sorted keys): format = medmoe-fixture, version = 1, generator, regenerate,
transformers, torch, case, and what the Rust test (tests/dots1_export.rs) needs to rebuild the
same MoE in-process: dense (fixture name), moe (the preset's `moe` section, JSON), split, fill,
router_init, seed, router_bias (`zeros` or `pattern1`), plus `sha256.<file>` of every exported
file (the Rust test must export the same bytes) and informative numbers: routing per layer,
`bias_changed_choices` (tokens x layers whose expert the bias changed), `min_score_gap` (the smallest
top-1 minus top-2 router score of any token and layer), the CLI's max abs diffs.

Once per run it also checks the dense path: `moe-cli export hf --format qwen3` of the committed
dense fixtures qwen3_bf16_d and qwen3_untied_b gives bit-identical tensors, loads in
transformers Qwen3ForCausalLM without warnings, and reproduces the fixture's reference logits.
Nothing of that is written.

Regenerate (from the repository root; builds moe-cli in release mode first):
    pyenv/bin/python tools/gen_dots1_fixture.py
Options: --only NAME[,NAME...], --out DIR (default tests/fixtures), --cli PATH (skip the build),
--keep DIR (a new directory to keep the MoE checkpoints and exports in).
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
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import Dots1ForCausalLM, Qwen3ForCausalLM  # noqa: E402

GENERATOR = "tools/gen_dots1_fixture.py"
REGENERATE = "pyenv/bin/python tools/gen_dots1_fixture.py"
MAX_DIR_BYTES = 2_000_000
TOL = 1e-4
# Smallest allowed top-1 minus top-2 router score (sigmoid, f32; 0.5 has an ulp of 6e-8).
MIN_SCORE_GAP = 1e-6
# The `--router-init` values of moe-cli surgery (model::surgery::apply::RouterInit::ALL).
ROUTER_INITS = ["near-uniform", "centroids", "random"]

# Shared widths are not multiples of the expert width, so the shared expert is zero-padded.
CASES = [
    dict(
        name="dots1_ste_a",
        dense="qwen3_untied_b",  # D 48, F 80, 3 layers, V 301, untied
        moe=dict(num_experts=4, expert_width=16, shared_width=20, router_weighting="ste",
                 router_temperature=0.9, capacity_factor=1.25, expert_dropout=0.0, router_noise=0.0,
                 lb_coef=0.01, z_coef=0.0001),
        split="kmeans", fill="overlap", router_init="random", seed=7,
        router_bias="zeros", batch=3, seq=17, ids_seed=31,
    ),
    dict(
        name="dots1_sigmoid_b",
        dense="qwen3_tied_a",  # D 64, F 96, 2 layers, V 256, tied
        moe=dict(num_experts=6, expert_width=16, shared_width=40, router_weighting="sigmoid",
                 router_temperature=1.0, capacity_factor=None, expert_dropout=0.0, router_noise=0.0,
                 lb_coef=0.01, z_coef=0.0),
        split="random", fill="drop-upcycle", router_init="random", seed=11,
        router_bias="pattern1", batch=2, seq=24, ids_seed=32,
    ),
] + [
    # One fresh conversion per router init, with the CLI's defaults for everything else.
    dict(
        name=f"dots1_init_{init.replace('-', '_')}_{letter}",
        dense="qwen3_untied_b",
        moe=dict(num_experts=4, expert_width=16, shared_width=20, router_weighting="ste",
                 router_temperature=0.9, capacity_factor=1.25, expert_dropout=0.0, router_noise=0.0,
                 lb_coef=0.01, z_coef=0.0001),
        split="importance-split", fill="overlap", router_init=init, seed=0,
        router_bias="zeros", batch=3, seq=17, ids_seed=33,
    )
    for init, letter in zip(ROUTER_INITS, "cde")
]


def pattern1(layer, experts):
    """The non-zero aux-loss-free bias of the sigmoid case (mirrored in tests/dots1_export.rs)."""
    return torch.tensor([((3 * layer + 5 * e) % 7 - 3) / 128 for e in range(experts)], dtype=torch.float32)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return r.stderr


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class HfLog:
    """Captures transformers' log output and Python warnings while loading."""

    def __enter__(self):
        self.buf = io.StringIO()
        self.handler = logging.StreamHandler(self.buf)
        logging.getLogger("transformers").addHandler(self.handler)
        self.warn = warnings.catch_warnings(record=True)
        self.caught = self.warn.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self.warn.__exit__(*exc)
        logging.getLogger("transformers").removeHandler(self.handler)

    def problems(self):
        return [str(w.message) for w in self.caught] + ([self.buf.getvalue()] if self.buf.getvalue() else [])


def load_clean(cls, d):
    """from_pretrained in f32 / eager; fails on any missing, unexpected or mismatched key or warning."""
    with HfLog() as log:
        model, info = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                          output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"{d}: loading info {bad}"
    assert not log.problems(), f"{d}: warnings while loading: {log.problems()}"
    assert type(model) is cls, type(model)
    return model.eval()


def read_logits(path):
    with safe_open(path, framework="pt") as f:
        return f.get_tensor("logits")


def cli_logits(cli, model_dir, ids, work, name):
    out = os.path.join(work, f"{name}.safetensors")
    rows = ";".join(",".join(str(int(t)) for t in row) for row in ids)
    run([cli, "--threads", "2", "logits", "--model", model_dir, "--ids", rows, "--out", out])
    return read_logits(out)


def routing(model, input_ids):
    """Per layer: chosen expert counts; how many choices the correction bias changed; the smallest
    top-1 minus top-2 biased score of any token and layer."""
    routers = [layer.mlp.gate for layer in model.model.layers]
    seen = []
    hooks = [r.register_forward_hook(lambda m, i, o: seen.append((m, o[0].detach()))) for r in routers]
    with torch.no_grad():
        model(input_ids)
    for h in hooks:
        h.remove()
    counts, changed, gap = [], 0, float("inf")
    for router, logits in seen:
        scores = logits.sigmoid()
        biased = scores + router.e_score_correction_bias
        with_bias = biased.argmax(-1)
        changed += int((with_bias != scores.argmax(-1)).sum())
        counts.append(torch.bincount(with_bias, minlength=scores.shape[-1]).tolist())
        top2 = biased.topk(2, dim=-1).values
        gap = min(gap, float((top2[:, 0] - top2[:, 1]).min()))
    return counts, changed, gap


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
    name = c["name"]
    dense_dir = os.path.join("tests", "fixtures", c["dense"])
    preset = json.load(open(os.path.join(dense_dir, "config.json")))
    preset.update(model_type="medmoe", architectures=["MedMoeForCausalLM"], moe=c["moe"])
    preset_path = os.path.join(work, f"{name}.preset.json")
    json.dump(preset, open(preset_path, "w"), indent=2)
    moe_dir, export_dir = os.path.join(work, f"{name}.moe"), os.path.join(work, f"{name}.dots1")
    run([cli, "--threads", "1", "surgery", "--model", dense_dir, "--preset", preset_path,
         "--importance", "magnitude", "--split", c["split"], "--fill", c["fill"],
         "--router-init", c["router_init"], "--seed", str(c["seed"]), "--out", moe_dir])
    if c["router_bias"] == "pattern1":
        path = os.path.join(moe_dir, "model.safetensors")
        tensors = load_file(path)
        for layer in range(preset["num_hidden_layers"]):
            key = f"model.layers.{layer}.mlp.gate.e_score_correction_bias"
            assert key in tensors and tensors[key].abs().sum() == 0, key
            tensors[key] = pattern1(layer, c["moe"]["num_experts"])
        save_file(tensors, path)
    print(run([cli, "--threads", "1", "export", "hf", "--model", moe_dir, "--format", "dots1",
               "--out", export_dir]).strip())
    files = sorted(os.listdir(export_dir))
    assert files == ["config.json", "model.safetensors"], files

    model = load_clean(Dots1ForCausalLM, export_dir)
    g = torch.Generator().manual_seed(c["ids_seed"])
    input_ids = torch.randint(0, preset["vocab_size"], (c["batch"], c["seq"]), generator=g)
    with torch.no_grad():
        logits = model(input_ids).logits.float().contiguous()
    counts, changed, gap = routing(model, input_ids)
    assert gap >= MIN_SCORE_GAP, f"{name}: top-2 router scores {gap:.3e} apart: a near-tie, choose other ids"
    if c["router_bias"] == "pattern1":
        assert changed > 0, "the correction bias changed no routing choice: make it larger"
    assert all(sum(1 for n in layer if n > 0) >= 2 for layer in counts), f"trivial routing {counts}"

    diffs = {}
    for src, d in [("moe", moe_dir), ("export", export_dir)]:
        ours = cli_logits(cli, d, input_ids.tolist(), work, f"{name}.{src}")
        diffs[src] = float((ours - logits).abs().max())
        assert diffs[src] <= TOL, f"{name}: moe-cli logits on the {src} differ by {diffs[src]:.3e} > {TOL}"

    meta = {
        "format": "medmoe-fixture", "version": "1", "generator": GENERATOR, "regenerate": REGENERATE,
        "transformers": transformers.__version__, "torch": torch.__version__, "case": name,
        "dense": c["dense"], "moe": json.dumps(c["moe"], sort_keys=True), "split": c["split"],
        "fill": c["fill"], "router_init": c["router_init"], "seed": str(c["seed"]),
        "router_bias": c["router_bias"], "routing": json.dumps(counts),
        "bias_changed_choices": str(changed), "min_score_gap": f"{gap:.3e}",
        "cli_max_abs_diff_moe": f"{diffs['moe']:.3e}", "cli_max_abs_diff_export": f"{diffs['export']:.3e}",
    }
    for f in files:
        meta[f"sha256.{f}"] = sha256(os.path.join(export_dir, f))
    d = os.path.join(out_root, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    ref = os.path.join(d, "reference.safetensors")
    save_file({"input_ids": input_ids.to(torch.int32).contiguous(), "logits": logits}, ref, metadata=meta)
    canonicalize_metadata(ref)
    with safe_open(ref, framework="pt") as f:
        assert f.metadata() == meta
        assert torch.equal(f.get_tensor("logits"), logits)
    total = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    assert total < MAX_DIR_BYTES, f"{name}: {total} bytes"
    print(f"{name}: routing {counts}, bias changed {changed} choices, min score gap {gap:.3e}, "
          f"moe-cli vs transformers max abs "
          f"diff {diffs['moe']:.3e} (MoE checkpoint) / {diffs['export']:.3e} (export), {total} bytes")


def check_qwen3(cli, work):
    """Dense export: bit-identical tensors, clean transformers load, the fixture's logits."""
    for dense in ["qwen3_bf16_d", "qwen3_untied_b"]:
        src = os.path.join("tests", "fixtures", dense)
        out = os.path.join(work, f"{dense}.qwen3")
        run([cli, "--threads", "1", "export", "hf", "--model", src, "--format", "qwen3", "--out", out])
        with safe_open(os.path.join(src, "model.safetensors"), framework="pt") as a, \
                safe_open(os.path.join(out, "model.safetensors"), framework="pt") as b:
            assert set(a.keys()) == set(b.keys()), set(a.keys()) ^ set(b.keys())
            for k in a.keys():
                x, y = a.get_tensor(k), b.get_tensor(k)
                assert x.dtype == y.dtype and torch.equal(x.view(torch.uint8), y.view(torch.uint8)), k
        model = load_clean(Qwen3ForCausalLM, out)
        with safe_open(os.path.join(src, "reference.safetensors"), framework="pt") as f:
            ids, want = f.get_tensor("input_ids").long(), f.get_tensor("logits")
        with torch.no_grad():
            got = model(ids).logits.float()
        diff = float((got - want).abs().max())
        assert diff <= TOL, f"{dense}: qwen3 export logits differ by {diff:.3e}"
        print(f"qwen3 export of {dense}: tensors bit-identical, loads cleanly, logits max abs diff {diff:.3e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--cli", default="", help="moe-cli binary (default: cargo build --release -p cli)")
    ap.add_argument("--keep", default="", help="keep the MoE checkpoints and exports in this directory")
    args = ap.parse_args()

    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    only = {s for s in args.only.split(",") if s}
    inits = {c["router_init"] for c in CASES if c["name"].startswith("dots1_init_")}
    assert inits == set(ROUTER_INITS), inits
    known = {c["name"] for c in CASES}
    if only - known:
        sys.exit(f"unknown case(s): {sorted(only - known)}; known: {sorted(known)}")
    cli = args.cli
    if not cli:
        subprocess.run(["cargo", "build", "--release", "-p", "cli"], check=True)
        cli = os.path.join("target", "release", "moe-cli")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, cli {cli}")
    work = args.keep or tempfile.mkdtemp(prefix="dots1-fixture-")
    if args.keep:
        os.makedirs(work)  # a new directory: the CLI never overwrites
    try:
        for c in CASES:
            if not only or c["name"] in only:
                generate(c, cli, args.out, work)
        check_qwen3(cli, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
