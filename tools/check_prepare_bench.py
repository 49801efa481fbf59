#!/usr/bin/env python3
"""Recall of `data prepare` on the cases tools/gen_prepare_corpus.py injected.

    tools/check_prepare_bench.py --truth GEN/truth.json --out PREPARED

Prints one JSON line: recall of exact copies, near copies (all, and those whose 5-word-shingle
Jaccard with their original is >= 0.8), PII values (scrubbed from the documents that were kept)
and contaminated documents; plus the manifest's removal counts. Standard library only.
"""
import argparse
import json
import os
import re

ID = re.compile(r'^\{"id":"((?:[^"\\]|\\.)*)"')
WORD = re.compile(r"[^\W_]+")


def shingles(text, n=5):
    w = [x.lower() for x in WORD.findall(text)]
    return {tuple(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


def jaccard(a, b):
    x, y = shingles(a), shingles(b)
    return len(x & y) / max(1, len(x | y))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--truth", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with open(a.truth) as fh:
        truth = json.load(fh)
    with open(os.path.join(a.out, "manifest.json")) as fh:
        manifest = json.load(fh)
    pii = {p["id"]: p for p in truth["pii"]}
    watch = {e["id"] for k in ("exact", "near", "contaminated") for e in truth[k]} | set(pii)
    kept, pii_left, pii_kept = set(), 0, 0
    for shard in manifest["shards"]:
        with open(os.path.join(a.out, shard["file"])) as fh:
            for line in fh:
                m = ID.match(line)
                if not m or m.group(1) not in watch:
                    continue
                doc_id = m.group(1)
                kept.add(doc_id)
                if doc_id in pii:
                    pii_kept += 1
                    text = json.loads(line)["text"]
                    pii_left += pii[doc_id]["value"] in text

    def removed(kind):
        ids = [e["id"] for e in truth[kind]]
        return sum(i not in kept for i in ids), len(ids)

    exact = removed("exact")
    near_all = removed("near")
    similar = [e for e in truth["near"] if jaccard(e["text"], e["text_of"]) >= 0.8]
    near_similar = (sum(e["id"] not in kept for e in similar), len(similar))
    contam = removed("contaminated")
    c = manifest["counts"]
    print(json.dumps({
        "documents": truth["documents"], "text_bytes": truth.get("text_bytes"),
        "exact_recall": exact[0] / max(1, exact[1]), "exact": exact,
        "near_recall": near_all[0] / max(1, near_all[1]), "near": near_all,
        "near_recall_j08": near_similar[0] / max(1, near_similar[1]), "near_j08": near_similar,
        "pii_recall": 1 - pii_left / max(1, pii_kept), "pii_injected_kept": pii_kept, "pii_left": pii_left,
        "contamination_recall": contam[0] / max(1, contam[1]), "contaminated": contam,
        "manifest": {k: c[k] for k in ("records", "kept", "exact_duplicates", "near_duplicates", "pii",
                                        "pii_documents", "contaminated", "language", "too_short", "empty")},
    }))


if __name__ == "__main__":
    main()
