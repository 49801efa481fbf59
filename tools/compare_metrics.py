#!/usr/bin/env python3
"""Compare training phases from their metrics.jsonl: step time and loss curves side by side.

    python3 tools/compare_metrics.py NAME=RUN/p0/metrics/metrics.jsonl NAME2=... [--every 8] [--fields kl,ce]

Per phase: steps, median and mean step time (tokens / tokens_per_s over the train lines; the
first step is left out of the mean: it pays for warm-up), then the chosen fields every `--every`
steps and at the last step, and the final evaluation (dev perplexity per domain, MCQ accuracy,
named-expert routing when present). Only the standard library is used.
"""

import argparse
import json
import statistics


def load(path):
    train, evals = {}, []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") == "train":
                train[r["step"]] = r
            elif r.get("kind") == "eval_report":
                evals.append(r)
    return train, evals


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="NAME=metrics.jsonl")
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--fields", default="loss,kl,ce")
    args = ap.parse_args()
    fields = args.fields.split(",")
    runs = [(r.split("=", 1)[0], load(r.split("=", 1)[1])) for r in args.runs]
    print("| run | steps | median step (s) | mean step (s, steps 2..) |")
    print("|---|---:|---:|---:|")
    for name, (train, _) in runs:
        times = [train[s]["tokens"] / train[s]["tokens_per_s"] for s in sorted(train)]
        rest = times[1:] or times
        print(f"| {name} | {len(times)} | {statistics.median(times):.3f} | {statistics.mean(rest):.3f} |")
    last = max(max(t) for _, (t, _) in runs)
    steps = sorted({s for s in range(1, last + 1) if s == 1 or s % args.every == 0} | {last})
    for field in fields:
        print(f"\n| step | " + " | ".join(f"{n} {field}" for n, _ in runs) + " |")
        print("|---:|" + "---:|" * len(runs))
        for s in steps:
            cells = [f"{t[s][field]:.4f}" if s in t and field in t[s] else "" for _, (t, _) in runs]
            print(f"| {s} | " + " | ".join(cells) + " |")
    print()
    for name, (_, evals) in runs:
        final = [e for e in evals if e.get("last")] or evals
        if not final:
            continue
        e = final[-1]
        ppl = ", ".join(f"{d} {v['ppl']:.3f}" for d, v in sorted(e["dev"]["per_domain"].items()))
        mcq = ", ".join(f"{m['set']} {100 * m['accuracy']:.1f}%" for m in e["mcq"])
        print(f"{name}: final eval @ {e['step']}: dev ppl {ppl}; mcq {mcq}")
        for d, r in sorted(e.get("named_routing", {}).items()):
            layers = " ".join(f"{100 * a:.1f}%" for a in r["per_layer"])
            print(f"  named {d} -> expert {r['expert']}: {100 * r['accuracy']:.1f}% of {r['tokens']} held-out "
                  f"tokens (per layer {layers})")


if __name__ == "__main__":
    main()
