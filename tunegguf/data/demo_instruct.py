"""The project's own instruction set (`data.train: demo-instruct`, task: chat), made up here.

Small tasks whose answers can be checked exactly: reverse a word, small integer
arithmetic, unit conversion, sort a short list, pick a field out of a sentence. Answers are
a few tokens, so a 135M model learns the format in about a hundred LoRA steps, and an
exported GGUF that answers differently shows as wrong answers, not only as a distance.
About one row in five is a two-exchange conversation whose second question refers to the
first answer ("Add 3 to that."), so multi-turn rendering and masking are exercised too.
Every row comes from the templates and word lists below with a fixed seed: the same set on
every machine.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Callable

DEMO_SEED = 20261201
DEMO_SIZE = 1000
# Bump when the templates or word lists change, so frozen runs see a different source.
DEMO_VERSION = 1
MULTI_TURN_SHARE = 0.2
CHECKABLE = True
"""Every answer is exact (the data manifest records answers_checkable for this set)."""

WORDS = [
    "planet", "garden", "window", "silver", "rocket", "forest", "candle", "bridge", "pencil", "market",
    "winter", "summer", "orange", "yellow", "dragon", "castle", "mirror", "butter", "travel", "coffee",
    "guitar", "island", "jacket", "ladder", "monkey", "needle", "pepper", "rabbit", "saddle", "ticket",
    "violin", "wallet", "anchor", "basket", "cactus", "donkey", "engine", "falcon", "hammer", "kettle",
    "lemon", "melon", "piano", "river", "stone", "tiger", "train", "water", "cloud", "bread",
    "chair", "dream", "flame", "grape", "house", "light", "mouse", "ocean", "paper", "queen",
    "robot", "snake", "table", "uncle", "voice", "whale", "zebra", "apple", "beach", "cable",
    "button", "carpet", "doctor", "finger", "hunter", "kitten", "letter", "magnet", "napkin", "parrot",
    "pocket", "number", "shadow", "spider", "sunset", "tunnel", "velvet", "wizard", "yogurt", "puzzle",
    "cookie", "helmet", "lizard", "meadow", "oyster", "pillow", "rhythm", "stream", "thread", "turkey",
]
NAMES = ["Ana", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas",
         "Kira", "Liam", "Maya", "Noah", "Olga", "Pablo", "Rosa", "Sam", "Tara", "Victor"]
CITIES = ["Lyon", "Porto", "Oslo", "Kyoto", "Lima", "Cairo", "Dublin", "Quito", "Seville", "Graz",
          "Tallinn", "Perth", "Austin", "Malmo", "Bergen", "Nantes", "Turin", "Leeds", "Cork", "Basel"]
JOBS = ["nurse", "baker", "pilot", "teacher", "painter", "lawyer", "farmer", "chemist", "tailor", "dentist"]
# (larger unit, smaller unit, how many smaller in one larger); integer results only.
UNITS = [
    ("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("kilograms", "grams", 1000),
    ("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7),
    ("liters", "milliliters", 1000), ("years", "months", 12),
]
SORT_WORDS = ["apple", "pear", "fig", "plum", "kiwi", "lime", "date", "grape", "mango", "peach",
              "cherry", "melon", "olive", "berry", "lemon", "guava"]

Turns = list[tuple[str, str]]  # (user question, assistant answer) per exchange


def _reverse(rng: random.Random, follow: bool) -> Turns:
    word = rng.choice(WORDS)
    question = rng.choice([f"Reverse the word '{word}'.", f"Spell '{word}' backwards.",
                           f"Write the word {word} in reverse."])
    turns = [(question, word[::-1])]
    if follow:
        if rng.random() < 0.5:
            turns.append(("Now reverse it again.", word))
        else:
            turns.append(("Now write that in capital letters.", word[::-1].upper()))
    return turns


def _arithmetic(rng: random.Random, follow: bool) -> Turns:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
    else:
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        if op == "-" and b > a:
            a, b = b, a  # no negative answers: a 135M model should learn the format, not signs
    result = a + b if op == "+" else a - b if op == "-" else a * b
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    question = rng.choice([f"What is {a} {op} {b}?", f"What is {a} {word} {b}?", f"Compute {a} {op} {b}."])
    turns = [(question, str(result))]
    if follow:
        k = rng.randint(2, 9)
        follow_up = rng.choice([
            (f"Add {k} to that.", result + k),
            (f"Now multiply that by {min(k, 5)}.", result * min(k, 5)),
            (f"Subtract {k} from that.", result - k),
        ])
        if follow_up[1] < 0:
            follow_up = (f"Add {k} to that.", result + k)
        turns.append((follow_up[0], str(follow_up[1])))
    return turns


def _convert(rng: random.Random, follow: bool) -> Turns:
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(2, 25)  # never 1: "1 hours" reads wrong and "1 hour" needs another list
    question = rng.choice([f"How many {small} are in {n} {big}?", f"Convert {n} {big} to {small}."])
    turns = [(question, str(n * factor))]
    if follow:
        m = rng.choice([x for x in range(2, 26) if x != n])
        turns.append((f"And in {m} {big}?", str(m * factor)))
    return turns


def _sort(rng: random.Random, follow: bool) -> Turns:
    if rng.random() < 0.5:
        numbers = rng.sample(range(1, 100), rng.randint(3, 5))
        question = f"Sort these numbers from smallest to largest: {', '.join(map(str, numbers))}."
        ordered = [str(x) for x in sorted(numbers)]
        again = "Now sort them from largest to smallest."
    else:
        words = rng.sample(SORT_WORDS, rng.randint(3, 5))
        question = f"Sort these words alphabetically: {', '.join(words)}."
        ordered = sorted(words)
        again = "Now list them in reverse alphabetical order."
    turns = [(question, ", ".join(ordered))]
    if follow:
        turns.append((again, ", ".join(reversed(ordered))))
    return turns


def _extract(rng: random.Random, follow: bool) -> Turns:
    fields = {"name": rng.choice(NAMES), "city": rng.choice(CITIES), "year": str(rng.randint(1990, 2024)),
              "job": rng.choice(JOBS)}
    n, c, y, j = fields["name"], fields["city"], fields["year"], fields["job"]
    sentence, present = rng.choice([
        (f"{n} moved to {c} in {y}", ["name", "city", "year"]),
        (f"In {y}, {n} opened a shop in {c}", ["name", "city", "year"]),
        (f"{n} works as a {j} in {c}", ["name", "city", "job"]),
        (f"{n}, a {j}, was born in {c} in {y}", ["name", "city", "year", "job"]),
    ])
    asked, other = rng.sample(present, 2)
    question = f"What is the {asked} in: '{sentence}'?"
    turns = [(question, fields[asked])]
    if follow:
        turns.append((f"And the {other}?", fields[other]))
    return turns


SKILLS: dict[str, Callable[[random.Random, bool], Turns]] = {
    "reverse": _reverse,
    "arithmetic": _arithmetic,
    "convert": _convert,
    "sort": _sort,
    "extract": _extract,
}


def generate_demo(n: int = DEMO_SIZE, seed: int = DEMO_SEED) -> list[dict]:
    """`n` rows {"messages": [...], "skill": name}, each opening with a question no other row
    asks (so no split's question is trained on in another), skills in turn, multi-turn rows drawn at
    MULTI_TURN_SHARE, in a seeded order."""
    if n < 1:
        raise ValueError(f"demo size must be at least 1, got {n}")
    rng = random.Random(seed)
    names = sorted(SKILLS)
    rows: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n:  # the templates cannot make that many distinct conversations
            raise ValueError(f"the demo-instruct templates ran out of distinct rows at {len(rows)}")
        skill = names[len(rows) % len(names)]
        turns = SKILLS[skill](rng, rng.random() < MULTI_TURN_SHARE)
        messages = []
        for question, answer in turns:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        # One row per first question: a test row's question never opens a training conversation.
        key = messages[0]["content"]
        if key in seen:
            continue
        seen.add(key)
        rows.append({"messages": messages, "skill": skill})
    rng.shuffle(rows)
    return rows


def demo_sha256(rows: list[dict] | None = None) -> str:
    """Digest of the generated rows (one JSON object a line), recorded in the data manifest."""
    rows = generate_demo() if rows is None else rows
    payload = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
