#!/usr/bin/env python3
"""Generate Qwen3 reference fixtures for medmoe's Rust tests (DESIGN.md section 3).

For every case this builds a small random-init transformers `Qwen3ForCausalLM` in float32 with
eager attention, saves it in the Hugging Face layout (config.json + safetensors, via
`save_pretrained(..., safe_serialization=True)`), loads it back, runs one forward with labels and one
backward, and writes `reference.safetensors` next to it:

  input_ids      [B,T]   int32   tokens fed to the model
  labels         [B,T]   int32   what was passed to HF as `labels` (a few positions are -100)
  targets        [B,T]   int32   labels shifted left by one, last position -100:
                                 the token each position must predict (-100 = ignored)
  logits         [B,T,V] f32
  loss           []      f32     HF's mean causal-LM loss from model(input_ids, labels=labels)
  grad.<name>    f32             d loss / d param for every model.named_parameters() entry
                                 (tied models have no separate lm_head entry)

Cases with train=True (qwen3_tied_a, qwen3_untied_b) also get `train.safetensors` (llm.c-style
training check): from a fresh f32 load of the stored weights, 5 steps of
torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05, foreach=False) on the
same batch (zero_grad, loss = model(input_ids, labels=labels).loss, backward, step):

  losses         [5]     f32     loss before each update
  final.<name>   f32     every model.named_parameters() entry after the 5 updates
  __metadata__           also lr, beta1, beta2, eps, weight_decay, steps (Python repr strings)

The reference is always computed on the model *loaded back from disk* as float32, so it is exactly
the f32 math on the stored weights (for the bf16 case: on the bf16-rounded weights). Afterwards the
fixture is verified by loading it again, rerunning, and comparing logits/loss/grads bit-exactly.

Regenerate (from the repository root):
    pyenv/bin/python tools/gen_qwen3_fixtures.py
Options: --out DIR (default tests/fixtures), --only NAME[,NAME...]
"""

import argparse
import json
import os
import shutil
import struct
import sys

# Keep the shared machine usable and results reproducible: 2 threads, set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import Qwen3Config, Qwen3ForCausalLM  # noqa: E402

GENERATOR = "tools/gen_qwen3_fixtures.py"
REGENERATE = "pyenv/bin/python tools/gen_qwen3_fixtures.py"
MAX_DIR_BYTES = 2_000_000  # each fixture directory must stay below 2 MB

# Every case varies shapes, eps, rope theta, tying, batch/seq. `init_std` is initializer_range;
# `norm_std` perturbs every RMSNorm weight as 1 + norm_std * randn so norms are non-trivial.
CASES = [
    dict(
        name="qwen3_tied_a",
        seed=1234,
        vocab=256, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=32, inter=96,
        tied=True, eps=1e-6, rope_theta=10000.0, max_pos=64,
        batch=2, seq=16, init_std=0.08, norm_std=0.2,
        storage="float32", shard=None, train=True,
    ),
    dict(
        name="qwen3_untied_b",
        seed=2024,
        vocab=301, hidden=48, layers=3, heads=6, kv_heads=3, head_dim=8, inter=80,
        tied=False, eps=1e-5, rope_theta=1e6, max_pos=512,
        batch=3, seq=33, init_std=0.1, norm_std=0.2,
        storage="float32", shard=None, train=True,
    ),
    dict(
        # NOTE: intermediate 140 instead of the 200 first asked for: with 200 the directory is
        # ~2.2 MB (weights + grads ~1.93 MB + logits 0.26 MB) and breaks the < 2 MB budget.
        # 140 is still not a multiple of 8, so it keeps exercising tile edges.
        name="qwen3_mqa_sharded_c",
        seed=77,
        vocab=512, hidden=96, layers=2, heads=4, kv_heads=1, head_dim=40, inter=140,
        tied=True, eps=1e-6, rope_theta=5e5, max_pos=128,
        batch=2, seq=64, init_std=0.06, norm_std=0.2,
        storage="float32", shard="250KB", train=False,
    ),
    dict(
        name="qwen3_bf16_d",
        seed=98765,
        vocab=256, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=32, inter=96,
        tied=False, eps=1e-6, rope_theta=10000.0, max_pos=64,
        batch=2, seq=16, init_std=0.08, norm_std=0.2,
        storage="bfloat16", shard=None, train=False,
    ),
]

# llm.c-style training check (cases with train=True): TRAIN_STEPS updates of torch.optim.AdamW
# (single-tensor path, foreach=False) on the reference batch, written to train.safetensors.
TRAIN_LR = 1e-2
TRAIN_BETAS = (0.9, 0.95)
TRAIN_EPS = 1e-8
TRAIN_WEIGHT_DECAY = 0.05
TRAIN_STEPS = 5

NORM_SUFFIXES = ("input_layernorm.weight", "post_attention_layernorm.weight",
                 "q_norm.weight", "k_norm.weight")


def make_config(c):
    return Qwen3Config(
        vocab_size=c["vocab"],
        hidden_size=c["hidden"],
        intermediate_size=c["inter"],
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        num_key_value_heads=c["kv_heads"],
        head_dim=c["head_dim"],
        hidden_act="silu",
        max_position_embeddings=c["max_pos"],
        initializer_range=c["init_std"],
        rms_norm_eps=c["eps"],
        use_cache=False,
        tie_word_embeddings=c["tied"],
        rope_parameters={"rope_type": "default", "rope_theta": float(c["rope_theta"])},
        attention_bias=False,
        attention_dropout=0.0,
        use_sliding_window=False,
    )


def load_f32(path):
    m = Qwen3ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    m.eval()  # no dropout anyway (attention_dropout=0); eval keeps it explicit
    return m


def build_model(c):
    torch.manual_seed(c["seed"])
    cfg = make_config(c)
    model = Qwen3ForCausalLM(cfg).to(torch.float32)
    model.config._attn_implementation = "eager"
    g = torch.Generator().manual_seed(c["seed"] + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(NORM_SUFFIXES) or name == "model.norm.weight":
                p.copy_(1.0 + c["norm_std"] * torch.randn(p.shape, generator=g))
    n_norm = sum(1 for n, _ in model.named_parameters()
                 if n.endswith(NORM_SUFFIXES) or n == "model.norm.weight")
    assert n_norm == 4 * c["layers"] + 1, n_norm
    return model


def make_batch(c):
    g = torch.Generator().manual_seed(c["seed"] + 2)
    B, T, V = c["batch"], c["seq"], c["vocab"]
    input_ids = torch.randint(0, V, (B, T), generator=g, dtype=torch.long)
    labels = input_ids.clone()
    # A few ignored positions: per row, 2 random positions in the interior, plus the first token of
    # row 0 (never a target anyway, must not matter) and one target right before the end of row 1.
    for b in range(B):
        idx = torch.randperm(T - 2, generator=g)[:2] + 1
        labels[b, idx] = -100
    labels[0, 0] = -100
    if B > 1:
        labels[1, T - 1] = -100
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    assert (targets != -100).sum() > 0
    return input_ids, labels, targets


def run_reference(model, input_ids, labels):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=input_ids, labels=labels, use_cache=False)
    out.loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        grads[name] = p.grad.detach().to(torch.float32).clone().contiguous()
    return out.logits.detach().to(torch.float32).clone().contiguous(), out.loss.detach().float().clone(), grads


def run_training(model, input_ids, labels):
    """TRAIN_STEPS AdamW updates on one batch. Returns the loss before each update [steps] and every
    named parameter after the last update (tied models: the shared matrix once, as
    model.embed_tokens.weight)."""
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR, betas=TRAIN_BETAS, eps=TRAIN_EPS,
                            weight_decay=TRAIN_WEIGHT_DECAY, foreach=False)
    losses = []
    for _ in range(TRAIN_STEPS):
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=input_ids, labels=labels, use_cache=False).loss
        loss.backward()
        opt.step()
        losses.append(loss.detach().float().reshape(()))
    final = {n: p.detach().to(torch.float32).clone().contiguous() for n, p in model.named_parameters()}
    return torch.stack(losses).contiguous(), final


def train_metadata(name):
    return {
        "format": "medmoe-fixture",
        "version": "1",
        "generator": GENERATOR,
        "regenerate": REGENERATE,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "case": name,
        "lr": repr(TRAIN_LR),
        "beta1": repr(TRAIN_BETAS[0]),
        "beta2": repr(TRAIN_BETAS[1]),
        "eps": repr(TRAIN_EPS),
        "weight_decay": repr(TRAIN_WEIGHT_DECAY),
        "steps": str(TRAIN_STEPS),
    }


def generate_training(c, d, input_ids, labels, ref_loss, ref_names):
    """Writes <d>/train.safetensors: `losses` [steps] and `final.<name>` for every parameter, from a
    fresh f32 load of the stored weights (exactly like the reference). Then reruns the whole thing
    from another fresh load and requires bit-identical losses and parameters."""
    model = load_f32(d)
    losses, final = run_training(model, input_ids, labels)
    assert list(final) == ref_names, (list(final), ref_names)
    # Step 0 is the reference forward on the same weights and batch.
    assert torch.equal(losses[0], ref_loss.reshape(())), (losses[0].item(), ref_loss.item())
    assert bool(torch.isfinite(losses).all()) and losses[-1] < losses[0], losses
    tensors = {"losses": losses}
    for n, p in final.items():
        tensors["final." + n] = p
    meta = train_metadata(c["name"])
    path = os.path.join(d, "train.safetensors")
    save_file(tensors, path, metadata=meta)
    canonicalize_metadata(path)

    with safe_open(path, framework="pt") as f:
        assert f.metadata() == meta, f.metadata()
        stored = {k: f.get_tensor(k) for k in f.keys()}
    assert set(stored) == set(tensors)
    again_losses, again_final = run_training(load_f32(d), input_ids, labels)
    assert torch.equal(again_losses, stored["losses"]), "losses not bit-exact on rerun"
    for n, p in again_final.items():
        assert torch.equal(p, stored["final." + n]), f"final.{n} not bit-exact on rerun"
    return [float(x) for x in losses]


def dir_size(path):
    total, files = 0, {}
    for f in sorted(os.listdir(path)):
        s = os.path.getsize(os.path.join(path, f))
        files[f] = s
        total += s
    return total, files


def generate(c, out_root):
    name = c["name"]
    d = os.path.join(out_root, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)

    model = build_model(c)
    save_kwargs = dict(safe_serialization=True)
    if c["shard"]:
        save_kwargs["max_shard_size"] = c["shard"]
    if c["storage"] == "bfloat16":
        model.to(torch.bfloat16).save_pretrained(d, **save_kwargs)
    else:
        model.save_pretrained(d, **save_kwargs)
    # Keep only what the Rust reader needs (config + weights), drop generation_config.json.
    gen_cfg = os.path.join(d, "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)

    # The reference is computed on the weights as stored on disk, loaded into an f32 model.
    ref_model = load_f32(d)
    if c["storage"] == "float32":
        # f32 round trip must be lossless.
        orig = dict(model.named_parameters())
        for n, p in ref_model.named_parameters():
            assert torch.equal(p, orig[n]), f"{name}: {n} changed on save/load"
    else:
        orig = dict(model.named_parameters())  # model is bf16 now
        for n, p in ref_model.named_parameters():
            assert p.dtype == torch.float32
            assert torch.equal(p, orig[n].to(torch.float32)), f"{name}: {n} not bf16-exact"
    names = [n for n, _ in ref_model.named_parameters()]
    if c["tied"]:
        assert "lm_head.weight" not in names
        assert ref_model.lm_head.weight.data_ptr() == ref_model.model.embed_tokens.weight.data_ptr()
    else:
        assert "lm_head.weight" in names

    input_ids, labels, targets = make_batch(c)
    logits, loss, grads = run_reference(ref_model, input_ids, labels)

    # Cross-check HF's loss with the explicit shifted definition used by our Rust side.
    V = c["vocab"]
    manual = torch.nn.functional.cross_entropy(
        logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100, reduction="mean")
    assert torch.allclose(manual, loss, rtol=0, atol=1e-6), (manual.item(), loss.item())

    tensors = {
        "input_ids": input_ids.to(torch.int32).contiguous(),
        "targets": targets.to(torch.int32).contiguous(),
        "labels": labels.to(torch.int32).contiguous(),
        "logits": logits,
        "loss": loss.reshape(()).contiguous(),
    }
    for n, g in grads.items():
        tensors["grad." + n] = g
    meta = {
        "format": "medmoe-fixture",
        "version": "1",
        "generator": GENERATOR,
        "regenerate": REGENERATE,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "case": name,
    }
    ref_path = os.path.join(d, "reference.safetensors")
    save_file(tensors, ref_path, metadata=meta)
    canonicalize_metadata(ref_path)

    verify(c, d, tensors, meta)

    train_losses = None
    if c["train"]:
        train_losses = generate_training(c, d, input_ids, labels, loss, names)

    total, files = dir_size(d)
    assert total < MAX_DIR_BYTES, f"{name}: {total} bytes >= {MAX_DIR_BYTES}"
    shards = [f for f in files if f.startswith("model") and f.endswith(".safetensors")]
    if c["shard"]:
        assert "model.safetensors.index.json" in files and len(shards) >= 2, files
    return dict(case=name, dir=d, total_bytes=total, files=files, loss=float(loss),
                n_params=sum(p.numel() for p in ref_model.parameters()), n_grads=len(grads),
                storage=c["storage"], shards=len(shards), train_losses=train_losses)


def canonicalize_metadata(path):
    """safetensors writes __metadata__ in hash-map order, which differs between runs. Rewrite the
    header with sorted metadata keys (same byte length, data offsets untouched) so that
    regenerating gives byte-identical files and clean git diffs."""
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
        header = json.loads(raw)
        meta = header.pop("__metadata__")
        new = {"__metadata__": dict(sorted(meta.items()))}
        new.update(header)
        text = json.dumps(new, separators=(",", ":"), ensure_ascii=False).encode()
        assert len(text) <= n, (len(text), n)
        text += b" " * (n - len(text))  # safetensors pads the header with spaces
        f.seek(8)
        f.write(text)


def verify(c, d, expect, meta):
    """Reload from disk (weights and reference), rerun, require bit-exact agreement."""
    with safe_open(os.path.join(d, "reference.safetensors"), framework="pt") as f:
        assert f.metadata() == meta, f.metadata()
        stored = {k: f.get_tensor(k) for k in f.keys()}
    assert set(stored) == set(expect)
    for k, v in expect.items():
        assert stored[k].dtype == v.dtype and torch.equal(stored[k], v), k
    model = load_f32(d)
    logits, loss, grads = run_reference(model, stored["input_ids"].long(), stored["labels"].long())
    assert torch.equal(logits, stored["logits"]), "logits not bit-exact on reload"
    assert torch.equal(loss.reshape(()), stored["loss"]), "loss not bit-exact on reload"
    for n, g in grads.items():
        assert torch.equal(g, stored["grad." + n]), f"grad.{n} not bit-exact on reload"
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "qwen3" and cfg["head_dim"] == c["head_dim"]
    assert cfg["rope_parameters"]["rope_theta"] == c["rope_theta"], cfg.get("rope_parameters")
    assert cfg["tie_word_embeddings"] == c["tied"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--only", default="", help="comma-separated case names")
    args = ap.parse_args()

    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    try:
        torch.use_deterministic_algorithms(True)
    except Exception as e:  # pragma: no cover
        print(f"warning: use_deterministic_algorithms unavailable: {e}", file=sys.stderr)

    only = {s for s in args.only.split(",") if s}
    known = {c["name"] for c in CASES}
    if only - known:
        sys.exit(f"unknown case(s): {sorted(only - known)}; known: {sorted(known)}")
    os.makedirs(args.out, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for c in CASES:
        if only and c["name"] not in only:
            continue
        r = generate(c, args.out)
        print(f"{r['case']}: loss={r['loss']:.6f} params={r['n_params']} grads={r['n_grads']} "
              f"storage={r['storage']} shards={r['shards']} total={r['total_bytes']} bytes "
              f"({r['total_bytes'] / 1e6:.3f} MB) verified bit-exact")
        if r["train_losses"] is not None:
            print(f"    AdamW losses: {' '.join(f'{x:.6f}' for x in r['train_losses'])}")
        for f, s in r["files"].items():
            print(f"    {s:>9}  {f}")


if __name__ == "__main__":
    main()
