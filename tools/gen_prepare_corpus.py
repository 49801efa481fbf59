#!/usr/bin/env python3
"""Builds the `data prepare` benchmark corpus from synthetic-world directories, with injected cases
whose ground truth is written beside it (used by tools/check_prepare_bench.py).

    tools/gen_prepare_corpus.py --worlds W0 W1 ... --out DIR [--shard-mb 128] [--seed 0]

Every world document is copied as {id, domain, text} (ids prefixed by the world's index). Injected, each recorded in
DIR/truth.json:
  - exact copies (1% of documents): the same text with different spacing;
  - near copies (1%): the text with 2% of its words (at least one) replaced by other words of it;
  - PII (1%): one sentence appended, rotating over email / phone / URL with credentials / date
    of birth / postal address / record number, each value unique;
  - contamination (200 documents): an eval question and its right answer of world 0 inside a
    document.
Writes DIR/corpus/part-NNNNN.jsonl and DIR/prepare.json (sources, eval files of world 0).
Standard library only.
"""
import argparse
import json
import os
import random
import re

WORD = re.compile(r"\w+")


def corpus_files(world):
    d = os.path.join(world, "corpus")
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".jsonl"))


def pii_sentence(kind, k, rng):
    if kind == "email":
        return f"Contact person{k}.lastname@clinic{k % 97}.example.org.", f"person{k}.lastname@clinic{k % 97}.example.org"
    if kind == "phone":
        v = f"{200 + k % 700:03d}-{rng.randrange(100, 1000)}-{k % 10000:04d}"
        return f"Call {v} for the results.", v
    if kind == "url_credentials":
        v = f"user{k}:pw{k}x@"
        return f"Records at https://{v}records{k}.example.com/export today.", v
    if kind == "date_of_birth":
        v = f"{1 + k % 12:02d}/{1 + k % 28:02d}/{1930 + k % 80}"
        return f"Patient DOB: {v}, seen in clinic.", v
    if kind == "postal_address":
        v = f"{100 + k % 9000} Maple{chr(97 + k % 26)} Street, Springfield, IL {60000 + k % 9999:05d}"
        return f"Lives at {v}.", v
    if kind == "record_id":
        v = f"{k:08d}"
        return f"MRN: {v} on admission.", v
    raise ValueError(kind)


KINDS = ["email", "phone", "url_credentials", "date_of_birth", "postal_address", "record_id"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worlds", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shard-mb", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(os.path.join(a.out, "corpus"), exist_ok=True)
    truth = {"exact": [], "near": [], "pii": [], "contaminated": []}
    eval_dir = os.path.join(a.worlds[0], "eval")
    eval_files = sorted(f for f in os.listdir(eval_dir) if f.endswith(".jsonl"))
    questions = []
    for f in eval_files:
        with open(os.path.join(eval_dir, f)) as fh:
            for line in fh:
                it = json.loads(line)
                questions.append((it["set"], it["id"], it["question"] + " " + it["options"][it["answer"]]))
    rng.shuffle(questions)
    shard, out, written = 0, None, 0
    limit = a.shard_mb << 20

    def emit(obj):
        nonlocal shard, out, written, text_bytes
        if out is None or written >= limit:
            if out:
                out.close()
            out = open(os.path.join(a.out, "corpus", f"part-{shard:05d}.jsonl"), "w")
            shard += 1
            written = 0
        text_bytes += len(obj["text"].encode())
        line = json.dumps(obj, ensure_ascii=False) + "\n"
        out.write(line)
        written += len(line.encode())

    n = k_pii = text_bytes = 0
    for wi, world in enumerate(a.worlds):
        for path in corpus_files(world):
            with open(path) as fh:
                for raw in fh:
                    full = json.loads(raw)
                    doc = {"id": f"w{wi}-{full['id']}", "domain": full["domain"], "text": full["text"]}
                    n += 1
                    r = rng.random()
                    if r < 0.01:
                        sentence, value = pii_sentence(KINDS[k_pii % len(KINDS)], k_pii, rng)
                        doc["text"] = doc["text"] + " " + sentence
                        truth["pii"].append({"id": doc["id"], "kind": KINDS[k_pii % len(KINDS)], "value": value})
                        k_pii += 1
                    emit(doc)
                    if 0.01 <= r < 0.02:
                        copy = dict(doc, id=doc["id"] + "-exact", text=doc["text"].replace(" ", "  ", 3))
                        truth["exact"].append({"id": copy["id"], "of": doc["id"]})
                        emit(copy)
                    elif 0.02 <= r < 0.03:
                        words = doc["text"].split(" ")
                        for _ in range(max(1, round(0.02 * len(words)))):
                            words[rng.randrange(len(words))] = rng.choice(words)
                        copy = dict(doc, id=doc["id"] + "-near", text=" ".join(words))
                        truth["near"].append({"id": copy["id"], "of": doc["id"], "text_of": doc["text"], "text": copy["text"]})
                        emit(copy)
                    elif 0.03 <= r < 0.0302 and len(truth["contaminated"]) < 200 and questions:
                        s, qid, q = questions.pop()
                        copy = dict(doc, id=doc["id"] + "-leak", text=doc["text"] + " Exam practice: " + q)
                        truth["contaminated"].append({"id": copy["id"], "set": s, "item": qid})
                        emit(copy)
    if out:
        out.close()
    truth["documents"] = n
    truth["text_bytes"] = text_bytes
    with open(os.path.join(a.out, "truth.json"), "w") as fh:
        json.dump(truth, fh)
    config = {
        "sources": [{"name": "world", "format": "jsonl", "path": "corpus", "domain": "medical",
                     "license": "CC0-1.0", "id_field": "id"}],
        "eval": [{"name": f[:-6], "format": "medmoe", "path": os.path.abspath(os.path.join(eval_dir, f))}
                 for f in eval_files],
        "max_bad_fraction": 0.0,
    }
    with open(os.path.join(a.out, "prepare.json"), "w") as fh:
        json.dump(config, fh, indent=1)
    print(json.dumps({"documents": n, "text_bytes": text_bytes, "shards": shard, "exact": len(truth["exact"]), "near": len(truth["near"]),
                      "pii": len(truth["pii"]), "contaminated": len(truth["contaminated"])}))


if __name__ == "__main__":
    main()
