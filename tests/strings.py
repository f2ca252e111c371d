"""A fixed, varied set of strings for tokenizer parity checks (generated, seeded)."""

from __future__ import annotations

import random

REVIEWS = [
    "this movie was absolutely wonderful , i loved every minute",
    "It's not bad... but it's not great either!",
    "Worst purchase EVER!!! Broke after 2 days :(",
    "the plot is thin , the acting wooden , and the ending predictable .",
    "I'd give it 4.5/5 -- would recommend to friends & family",
    "don't waste your money; it's overpriced junk",
    "A masterpiece.\nTruly.\n\nGo see it.",
]
UNICODE = [
    "café naïve résumé façade", "Größe Übermaß straße", "日本語のテキストです", "中文评论：很好看",
    "한국어 리뷰입니다", "Привет, как дела?", "مرحبا بالعالم", "שלום עולם", "Ελληνικά γράμματα",
    "emoji 😀😂🤣 ❤️ 👍🏽", "family 👨‍👩‍👧‍👦 flag 🇫🇷", "math ∑∫√∞ ≠ ≤ ≥", "ﬁ ligature and ½ fraction",
    "tab\tseparated\tvalues", "zero\u200bwidth", "non\u00a0breaking space", "mixed 中文 and English 123",
]
DIGITS = ["0", "7", "42", "123", "1234", "12345678901234567890", "3.14159", "1,000,000", "2026-11-25",
          "v1.2.3", "0x1F", "-17", "+3", "50%", "$19.99", "10^6", "1e-5"]
WHITESPACE = ["", " ", "  ", "\n", "\n\n", " \n ", "\t", "  leading", "trailing  ", "a  b   c",
              "line1\r\nline2", "   \n\n   x"]
CODE = ["def f(x):\n    return x ** 2", "if (a && b) { c++; }", "SELECT * FROM t WHERE id=1;",
        "<div class=\"x\">hi</div>", "path/to/file.txt", "user@example.com", "https://example.org/a?b=c"]


def chat_strings(specials: list[str]) -> list[str]:
    """Prompts with special tokens, the way rendered templates contain them."""
    out = []
    for s in specials:
        out.append(f"{s}user\nhello{s}")
        out.append(f"text before {s} text after")
        out.append(f"{s}{s}")
    return out


def varied_strings(n: int = 520, specials: list[str] | None = None, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pool = REVIEWS + UNICODE + DIGITS + WHITESPACE + CODE
    base = pool + chat_strings(specials or [])
    out = list(base)
    while len(out) < n:
        k = rng.randint(2, 4)
        parts = [rng.choice(pool) for _ in range(k)]
        sep = rng.choice([" ", "\n", "", "  ", "\t", ". "])
        text = sep.join(parts)
        if specials and rng.random() < 0.25:
            text = rng.choice(specials) + text + rng.choice(specials)
        out.append(text)
    return out[:n]
