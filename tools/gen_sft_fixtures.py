#!/usr/bin/env python3
"""Generate the SFT / preference-loss fixtures (torch only, float64): tests/fixtures/sft_po/reference.json.

Oracles for the losses of phases p2 (SFT) and p3 (DPO / SimPO), at the level of logits: the Rust
side feeds the same logits through its fused LM-head ops with an identity head (`h = logits`,
`w = I`), so d loss / d h there is d loss / d logits here.

Part `sft` (masked SFT cross-entropy with gradient accumulation):
  V = 11, T = 8, two micro-batches of different token counts:
    mb0: B = 2: row 0 one document (prompt 3 tokens, assistant 4, padding 1), row 1 two packed
         documents with position ids restarting at 0 (4 + 4 tokens);
    mb1: B = 1: one document with 2 trained tokens, the rest padding.
  labels are -100 on prompt and padding tokens; the target of position t is labels[t+1] unless
  position_ids[t+1] == 0 (no document is predicted from the one before) -> `targets [B*T]`.
  loss = F.cross_entropy(z[:, :-1], labels[:, 1:], ignore_index=-100, reduction='sum') summed over
  both micro-batches / total counted tokens (the token mean over the whole accumulated batch, not
  the mean of the two means, which is stored too as `mean_of_means`); `dlogits` per micro-batch.
  The closed form (softmax - onehot) / N is asserted here.

Part `dpo` / `simpo` (one batch of P = 3 pairs, T = 9, V = 13):
  prompts of 2..4 tokens shared by a pair's chosen and rejected sequences, completions of
  different lengths, right padding; completion_mask = 1 on completion tokens only (TRL).
  logp = (log_softmax(z[:, :-1]).gather(ids[:, 1:]) * mask[:, 1:]).sum(1)   (TRL selective_log_softmax)
  DPO  (beta 0.1, random reference log-probs): u = beta((lw - rw) - (ll - rl)), L = -logsigmoid(u).mean(),
       rewards beta (logp - ref).
  SimPO (beta 2.5, gamma = 0.55 * beta = 1.375, absolute as TRL CPO simpo_gamma with cpo_alpha 0):
       u = beta lw/|yw| - beta ll/|yl| - gamma, rewards beta logp/|y|.
  Stored: logits (chosen rows then rejected rows), ids, targets (next token where it is a completion
  token, else -100), logps, rewards, loss, dlogits; the closed-form gradient of
  research/qat-po-sft.md section 2 is asserted, and prompt/padding rows have zero gradient.

Regenerate (from the repository root; byte-identical on rerun):
    pyenv/bin/python tools/gen_sft_fixtures.py
"""

import json
import os

import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "sft_po", "reference.json")
IGNORE = -100


def f32(t):
    """Round to float32 and back, so Rust reads exactly the values the oracle used."""
    return t.float().double()


def flat(t):
    return [float(x) for x in t.reshape(-1).tolist()]


def ints(t):
    return [int(x) for x in t.reshape(-1).tolist()]


def shifted_targets(labels, pos):
    """targets[t] = labels[t+1] unless position t+1 starts a document; the last one is -100."""
    b, t = labels.shape
    out = torch.full((b, t), IGNORE, dtype=torch.long)
    nxt = labels[:, 1:].clone()
    nxt[pos[:, 1:] == 0] = IGNORE
    out[:, :-1] = nxt
    return out


def sft_part(g):
    v, t = 11, 8
    # (ids, labels-mask, positions) per micro-batch row.
    mb0_ids = torch.randint(1, v, (2, t), generator=g)
    mb0_ids[0, 7] = 0  # padding
    mb0_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 1, 1, 1]])
    mb0_pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 0], [0, 1, 2, 3, 0, 1, 2, 3]])
    mb1_ids = torch.randint(1, v, (1, t), generator=g)
    mb1_ids[0, 4:] = 0
    mb1_mask = torch.tensor([[0, 0, 1, 1, 0, 0, 0, 0]])
    mb1_pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    micro = []
    sums, counts, logits_all = [], [], []
    for ids, mask, pos in [(mb0_ids, mb0_mask, mb0_pos), (mb1_ids, mb1_mask, mb1_pos)]:
        b = ids.shape[0]
        z = f32(torch.randn(b, t, v, generator=g, dtype=torch.float64) * 2.0).requires_grad_(True)
        labels = torch.where(mask == 1, ids, torch.full_like(ids, IGNORE))
        tg = shifted_targets(labels, pos)
        s = F.cross_entropy(z.reshape(-1, v), tg.reshape(-1), ignore_index=IGNORE, reduction="sum")
        n = int((tg != IGNORE).sum())
        sums.append(s)
        counts.append(n)
        logits_all.append(z)
        micro.append({"b": b, "t": t, "v": v, "ids": ints(ids), "pos": ints(pos), "targets": ints(tg), "count": n,
                      "logits": flat(z.detach())})
    total = sum(counts)
    loss = (sums[0] + sums[1]) / total
    loss.backward()
    for m, z, n in zip(micro, logits_all, counts):
        m["dlogits"] = flat(z.grad)
        # Closed form: (softmax - onehot) / N_total on counted rows, 0 elsewhere.
        tg = torch.tensor(m["targets"], dtype=torch.long).reshape(m["b"], m["t"])
        want = torch.softmax(z.detach(), -1)
        counted = tg != IGNORE
        want[counted] -= F.one_hot(tg[counted], v).double()
        want[~counted] = 0
        assert torch.allclose(z.grad, want / total, atol=1e-14), "SFT closed form"
    mean_of_means = 0.5 * (sums[0].item() / counts[0] + sums[1].item() / counts[1])
    assert abs(mean_of_means - float(loss)) > 1e-3, "the two means must differ for the test to mean something"
    return {"micro": micro, "loss": float(loss), "total_count": total, "mean_of_means": mean_of_means}


def pair_batch(g, p, t, v):
    """Chosen and rejected ids + completion masks: prompts shared per pair, right padding."""
    prompt_len = [2, 3, 4][:p]
    comp_c = [4, 5, 3][:p]
    comp_r = [6, 2, 4][:p]
    ids = torch.zeros(2 * p, t, dtype=torch.long)
    mask = torch.zeros(2 * p, t, dtype=torch.long)
    for j in range(p):
        prompt = torch.randint(1, v, (prompt_len[j],), generator=g)
        for row, comp in [(j, comp_c[j]), (p + j, comp_r[j])]:
            ids[row, : prompt_len[j]] = prompt
            ids[row, prompt_len[j]: prompt_len[j] + comp] = torch.randint(1, v, (comp,), generator=g)
            mask[row, prompt_len[j]: prompt_len[j] + comp] = 1
    return ids, mask


def seq_logps(z, ids, mask):
    lp = torch.log_softmax(z[:, :-1], -1).gather(2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (lp * mask[:, 1:]).sum(1)


def closed_form(z, ids, mask, coef):
    """dL/dz_t = coef_seq * m_{t+1} * (onehot(ids_{t+1}) - softmax(z_t)), coef_seq = dL/dlogp_seq."""
    sm = torch.softmax(z.detach(), -1)
    oh = F.one_hot(ids[:, 1:], z.shape[-1]).double()
    g = torch.zeros_like(z)
    g[:, :-1] = coef[:, None, None] * mask[:, 1:, None] * (oh - sm[:, :-1])
    return g


def preference_part(g, kind):
    p, t, v = 3, 9, 13
    ids, mask = pair_batch(g, p, t, v)
    z = f32(torch.randn(2 * p, t, v, generator=g, dtype=torch.float64) * 1.5).requires_grad_(True)
    logp = seq_logps(z, ids, mask)
    lens = mask[:, 1:].sum(1).double()
    out = {"pairs": p, "t": t, "v": v, "ids": ints(ids), "completion_mask": ints(mask)}
    tg = torch.where(mask[:, 1:] == 1, ids[:, 1:], torch.full_like(ids[:, 1:], IGNORE))
    out["targets"] = ints(torch.cat([tg, torch.full((2 * p, 1), IGNORE, dtype=torch.long)], 1))
    if kind == "dpo":
        beta = 0.1
        ref = f32(logp.detach() + torch.randn(2 * p, generator=g, dtype=torch.float64) * 2.0)
        rw, rl = logp[:p] - ref[:p], logp[p:] - ref[p:]
        u = beta * (rw - rl)
        k = torch.full((2 * p,), beta, dtype=torch.float64)
        rewards = beta * (logp - ref).detach()
        out.update({"beta": beta, "reference_logps": flat(ref)})
    else:
        beta, ratio = 2.5, 0.55
        gamma = beta * ratio
        avg = logp / lens
        u = beta * avg[:p] - beta * avg[p:] - gamma
        k = beta / lens
        rewards = (beta * avg).detach()
        out.update({"beta": beta, "gamma_beta_ratio": ratio, "gamma": gamma})
    loss = -F.logsigmoid(u).mean()
    loss.backward()
    dl_du = (-torch.sigmoid(-u) / p).detach()
    coef = torch.cat([dl_du * k[:p], -dl_du * k[p:]])  # dL/dlogp per sequence
    assert torch.allclose(z.grad, closed_form(z, ids, mask, coef), atol=1e-14), f"{kind} closed form"
    # Rows whose next token is prompt or padding get no gradient.
    dead = torch.ones(2 * p, t, dtype=torch.bool)
    dead[:, :-1] = mask[:, 1:] == 0
    assert z.grad[dead].abs().max() == 0, f"{kind}: gradient on prompt or padding rows"
    out.update({
        "logits": flat(z.detach()),
        "policy_logps": flat(logp.detach()),
        "completion_lengths": ints(lens),
        "chosen_rewards": flat(rewards[:p]),
        "rejected_rewards": flat(rewards[p:]),
        "loss": float(loss),
        "dlogp": flat(coef),
        "dlogits": flat(z.grad),
    })
    return out


def main():
    g = torch.Generator().manual_seed(1234)
    fixture = {
        "format": "medmoe-sft-po-fixture",
        "version": 1,
        "command": "pyenv/bin/python tools/gen_sft_fixtures.py",
        "torch": torch.__version__,
        "sft": sft_part(g),
        "dpo": preference_part(g, "dpo"),
        "simpo": preference_part(g, "simpo"),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(fixture, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)}: sft loss {fixture['sft']['loss']:.6f}, "
          f"dpo loss {fixture['dpo']['loss']:.6f}, simpo loss {fixture['simpo']['loss']:.6f}")


if __name__ == "__main__":
    main()
