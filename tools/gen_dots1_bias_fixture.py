#!/usr/bin/env python3
"""Generate the trained-bias Dots1 fixture: a router bias trained by aux-loss-free balancing
(DeepSeek-V3: after each step `b_i -= rate * sign(load_i - mean load)`) exports to Dots1 and
transformers reproduces our logits with it.

Driving the real CLI, as tools/gen_dots1_fixture.py does:

  1. `moe-cli surgery` turns the committed dense fixture qwen3_tied_a into a medmoe MoE with a
     sigmoid router (6 routed experts of 16, shared expert of 40, random router init), bias 0;
  2. `moe-cli export hf --format dots1`, loaded in transformers `Dots1ForCausalLM` (no missing /
     unexpected key, no warning);
  3. trains the bias: STEPS steps, each routes one random batch (transformers' own top-1 choice,
     `argmax(sigmoid(logits) + bias)`), counts tokens per expert per layer and moves every layer's
     bias by `-RATE * sign(count_i - mean)` (RATE = 2^-8, so every bias is an exact multiple of it).
     Every step requires the top-1 and top-2 biased scores of every token to be at least
     MIN_SCORE_GAP apart, so our f32 forward makes the same choices;
  4. writes the trained bias into the MoE checkpoint, exports again with the CLI, runs
     transformers on fixed input ids, and cross-checks `moe-cli logits` on both the MoE
     checkpoint and the export (<= 1e-4).

It writes tests/fixtures/dots1bias_trained_a/: config.json + model.safetensors (the MoE of step 1,
bias 0: what the Rust test trains) and reference.safetensors:

  input_ids    [B,T]     int32
  logits       [B,T,V]   f32     transformers Dots1ForCausalLM on the export with the trained bias
  train_ids    [K,b,t]   int32   the STEPS training batches
  router_bias  [L,E]     f32     the trained bias

`__metadata__`: format = medmoe-fixture, version = 1, generator, regenerate, transformers, torch,
case, rate, steps, and informative numbers (routing before / after, bias_changed_choices,
min_score_gap, the CLI's max abs diffs). tests/dots1_trained_bias.rs trains the bias with our
forward and `actors::bias_balance::update_router_bias` (the trainer's update), requires the same
bias bit for bit, exports it to Dots1 and requires transformers' logits.

Regenerate (from the repository root; builds moe-cli in release mode first):
    pyenv/bin/python tools/gen_dots1_bias_fixture.py [--cli PATH] [--out DIR]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_dots1_fixture as g  # noqa: E402  (shared helpers; sets the thread counts)

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import Dots1ForCausalLM  # noqa: E402

GENERATOR = "tools/gen_dots1_bias_fixture.py"
REGENERATE = "pyenv/bin/python tools/gen_dots1_bias_fixture.py"
NAME = "dots1bias_trained_a"
DENSE = "qwen3_tied_a"  # D 64, F 96, 2 layers, V 256, tied
MOE = dict(num_experts=6, expert_width=16, shared_width=40, router_weighting="sigmoid")
SURGERY = ["--importance", "magnitude", "--split", "random", "--fill", "drop-upcycle",
           "--router-init", "random", "--seed", "11"]
RATE = 2.0 ** -8
STEPS = 16
TRAIN_SHAPE = (4, 32)
TRAIN_SEED = 41
EVAL_SHAPE = (2, 24)
EVAL_SEED = 42
MIN_SCORE_GAP = 1e-6


def router_choices(model, input_ids):
    """Per layer: (top-1 choice [N], smallest top-1 minus top-2 biased score)."""
    routers = [layer.mlp.gate for layer in model.model.layers]
    seen = []
    hooks = [r.register_forward_hook(lambda m, i, o: seen.append((m, o[0].detach()))) for r in routers]
    with torch.no_grad():
        model(input_ids)
    for h in hooks:
        h.remove()
    out = []
    for router, logits in seen:
        biased = logits.sigmoid() + router.e_score_correction_bias
        top2 = biased.topk(2, dim=-1).values
        out.append((biased.argmax(-1), float((top2[:, 0] - top2[:, 1]).min())))
    return out


def train_bias(model, train_ids, experts):
    """STEPS bias updates; returns the routing counts before and after and the smallest gap."""
    gap, history = float("inf"), []
    for k in range(train_ids.shape[0]):
        routed = router_choices(model, train_ids[k])
        counts = []
        for layer, (choice, layer_gap) in zip(model.model.layers, routed):
            gap = min(gap, layer_gap)
            assert layer_gap >= MIN_SCORE_GAP, f"step {k}: near-tie {layer_gap:.3e}: choose another seed"
            c = torch.bincount(choice, minlength=experts)
            # sign(load_i - mean) with exact integers: compare load_i * E with the total.
            step = torch.sign(c * experts - c.sum()).to(torch.float32) * RATE
            with torch.no_grad():
                layer.mlp.gate.e_score_correction_bias -= step
            counts.append(c.tolist())
        history.append(counts)
    return history[0], history[-1], gap


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--cli", default="", help="moe-cli binary (default: cargo build --release -p cli)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    cli = args.cli
    if not cli:
        subprocess.run(["cargo", "build", "--release", "-p", "cli"], check=True)
        cli = os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "moe-cli")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, cli {cli}")
    work = tempfile.mkdtemp(prefix="dots1-bias-fixture-")
    try:
        dense_dir = os.path.join("tests", "fixtures", DENSE)
        preset = json.load(open(os.path.join(dense_dir, "config.json")))
        preset.update(model_type="medmoe", architectures=["MedMoeForCausalLM"], moe=MOE)
        preset_path = os.path.join(work, "preset.json")
        json.dump(preset, open(preset_path, "w"), indent=2)
        moe_dir, trained_dir = os.path.join(work, "moe"), os.path.join(work, "trained")
        g.run([cli, "--threads", "1", "surgery", "--model", dense_dir, "--preset", preset_path, *SURGERY,
               "--out", moe_dir])
        g.run([cli, "--threads", "1", "export", "hf", "--model", moe_dir, "--format", "dots1",
               "--out", os.path.join(work, "zero.dots1")])
        model = g.load_clean(Dots1ForCausalLM, os.path.join(work, "zero.dots1"))

        experts, layers, vocab = MOE["num_experts"], preset["num_hidden_layers"], preset["vocab_size"]
        gen = torch.Generator().manual_seed(TRAIN_SEED)
        train_ids = torch.randint(0, vocab, (STEPS, *TRAIN_SHAPE), generator=gen)
        first, last, train_gap = train_bias(model, train_ids, experts)
        bias = torch.stack([layer.mlp.gate.e_score_correction_bias.detach().clone() for layer in model.model.layers])
        assert bias.abs().sum() > 0 and ((bias / RATE).round() * RATE == bias).all(), bias
        print(f"routing counts at step 0 {first}, at step {STEPS - 1} {last}; trained bias / rate:\n"
              f"{(bias / RATE).round().int().tolist()}")

        # The trained bias into the MoE checkpoint, exported again by the CLI.
        shutil.copytree(moe_dir, trained_dir)
        path = os.path.join(trained_dir, "model.safetensors")
        tensors = load_file(path)
        for layer in range(layers):
            key = f"model.layers.{layer}.mlp.gate.e_score_correction_bias"
            assert key in tensors and tensors[key].abs().sum() == 0, key
            tensors[key] = bias[layer].contiguous()
        save_file(tensors, path)
        export_dir = os.path.join(work, "trained.dots1")
        g.run([cli, "--threads", "1", "export", "hf", "--model", trained_dir, "--format", "dots1",
               "--out", export_dir])
        exported = g.load_clean(Dots1ForCausalLM, export_dir)
        gen = torch.Generator().manual_seed(EVAL_SEED)
        input_ids = torch.randint(0, vocab, EVAL_SHAPE, generator=gen)
        with torch.no_grad():
            logits = exported(input_ids).logits.float().contiguous()
        routed = router_choices(exported, input_ids)
        eval_gap = min(gap for _, gap in routed)
        assert eval_gap >= MIN_SCORE_GAP, f"near-tie {eval_gap:.3e} on the input ids: choose another seed"
        with torch.no_grad():
            model_no_bias = g.load_clean(Dots1ForCausalLM, os.path.join(work, "zero.dots1"))
        changed = sum(int((a != b).sum()) for (a, _), (b, _) in zip(routed, router_choices(model_no_bias, input_ids)))
        assert changed > 0, "the trained bias changed no routing choice on the input ids"
        diffs = {}
        for src, d in [("moe", trained_dir), ("export", export_dir)]:
            ours = g.cli_logits(cli, d, input_ids.tolist(), work, f"trained.{src}")
            diffs[src] = float((ours - logits).abs().max())
            assert diffs[src] <= g.TOL, f"moe-cli logits on the {src} differ by {diffs[src]:.3e}"

        meta = {
            "format": "medmoe-fixture", "version": "1", "generator": GENERATOR, "regenerate": REGENERATE,
            "transformers": transformers.__version__, "torch": torch.__version__, "case": NAME,
            "dense": DENSE, "moe": json.dumps(MOE, sort_keys=True), "surgery": " ".join(SURGERY),
            "rate": repr(RATE), "steps": str(STEPS), "routing_first_step": json.dumps(first),
            "routing_last_step": json.dumps(last), "bias_changed_choices": str(changed),
            "min_score_gap": f"{min(train_gap, eval_gap):.3e}",
            "cli_max_abs_diff_moe": f"{diffs['moe']:.3e}", "cli_max_abs_diff_export": f"{diffs['export']:.3e}",
        }
        d = os.path.join(args.out, NAME)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for f in ["config.json", "model.safetensors"]:
            shutil.copyfile(os.path.join(moe_dir, f), os.path.join(d, f))
        ref = os.path.join(d, "reference.safetensors")
        save_file({"input_ids": input_ids.to(torch.int32).contiguous(), "logits": logits,
                   "train_ids": train_ids.to(torch.int32).contiguous(), "router_bias": bias.contiguous()},
                  ref, metadata=meta)
        g.canonicalize_metadata(ref)
        with safe_open(ref, framework="pt") as f:
            assert f.metadata() == meta
        total = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        assert total < g.MAX_DIR_BYTES, f"{total} bytes"
        print(f"{NAME}: bias changed {changed} choices, smallest score gap {min(train_gap, eval_gap):.3e}, "
              f"moe-cli vs transformers max abs diff {diffs['moe']:.3e} (MoE) / {diffs['export']:.3e} (export), "
              f"{total} bytes")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
