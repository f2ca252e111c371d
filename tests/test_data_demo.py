"""The built-in demo set: deterministic, balanced, varied, with negation and mixed sentences."""

from __future__ import annotations

import re
from collections import Counter

from tunegguf.data.demo import DEMO_SIZE, demo_examples, demo_sha256, generate_demo


def test_demo_is_deterministic_and_balanced():
    rows = generate_demo()
    assert rows == generate_demo()
    assert demo_sha256(rows) == demo_sha256()
    assert len(rows) == DEMO_SIZE == 800
    assert Counter(r["label"] for r in rows) == {"negative": 400, "positive": 400}
    assert len({r["text"] for r in rows}) == 800
    assert generate_demo(20, seed=1) != generate_demo(20, seed=2)


def test_demo_has_variety_negation_and_mixed_sentences():
    rows = generate_demo()
    texts = [r["text"] for r in rows]
    assert all(3 <= len(t.split()) <= 30 for t in texts)
    assert len({t.split()[0] for t in texts}) > 20  # many different openings
    by_label = {label: [r["text"] for r in rows if r["label"] == label] for label in ("negative", "positive")}
    # "not bad" style praise and "not great" style complaints are both present.
    assert sum(bool(re.search(r"\bnot (bad|terrible|awful)\b", t)) for t in by_label["positive"]) >= 10
    assert sum(bool(re.search(r"\bnot (great|good|impressive|very good)\b", t)) for t in by_label["negative"]) >= 10
    # Mixed sentences in both directions: a word of the other polarity does not give the label away.
    for label in by_label:
        assert sum(t.startswith(("Although", "Despite")) or ", but the" in t for t in by_label[label]) >= 20
    # Neither class is recognisable by one cue word alone.
    for cue in ("great", "terrible", "not", "but"):
        counts = Counter(r["label"] for r in rows if re.search(rf"\b{cue}\b", r["text"]))
        assert len(counts) == 2, cue


def test_demo_examples_have_stable_ids():
    examples = demo_examples()
    assert [e.id for e in examples[:3]] == ["demo-0", "demo-1", "demo-2"]
    assert examples == demo_examples()
