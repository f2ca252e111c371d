"""The project's own small sentiment set: short product and movie reviews, made up here.

Every sentence comes from the templates and word lists below (no third-party text), drawn
with a fixed seed, so the set is the same on every machine. It is meant to be learnable by
a 135M model in a few dozen LoRA steps yet not trivial zero-shot: besides plain praise and
complaints it has negation ("not bad" is mild praise, "not great" a complaint), hedged
intensity, and mixed sentences whose verdict comes after "but" / "although".
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Callable

from tunegguf.data.example import Example

DEMO_SEED = 20240611
DEMO_SIZE = 800
LABELS = ["negative", "positive"]
# Bump when the templates or word lists change, so frozen runs see a different source.
DEMO_VERSION = 1

PRODUCTS = {
    "pair of headphones": ["sound", "noise cancelling", "battery life", "fit", "bass", "microphone"],
    "blender": ["motor", "lid", "jar", "blades", "cleanup", "noise level"],
    "laptop": ["screen", "keyboard", "battery life", "trackpad", "speakers", "fan noise"],
    "backpack": ["zippers", "straps", "pockets", "stitching", "padding", "fabric"],
    "coffee maker": ["brew time", "carafe", "flavor", "water tank", "timer", "filter"],
    "desk lamp": ["brightness", "hinge", "base", "light color", "switch", "cord"],
    "pair of running shoes": ["cushioning", "grip", "fit", "laces", "arch support", "sole"],
    "vacuum cleaner": ["suction", "battery life", "dust bin", "brush", "noise level", "hose"],
    "phone case": ["grip", "buttons", "corners", "finish", "fit", "clip"],
    "electric kettle": ["boil time", "handle", "lid", "spout", "auto shutoff", "base"],
    "tent": ["poles", "zippers", "rain fly", "floor", "setup", "stakes"],
    "smartwatch": ["display", "battery life", "strap", "step counter", "app", "charger"],
    "air fryer": ["basket", "timer", "controls", "cooking time", "cleanup", "fan noise"],
    "office chair": ["armrests", "cushion", "wheels", "back support", "assembly", "height lever"],
    "wireless speaker": ["sound", "bass", "battery life", "pairing", "volume", "buttons"],
}

MOVIES = {
    "film": ["acting", "plot", "soundtrack", "dialogue", "pacing", "ending"],
    "movie": ["cast", "script", "visuals", "humor", "story", "final act"],
    "sequel": ["villain", "action scenes", "plot", "effects", "score", "pacing"],
    "documentary": ["narration", "footage", "interviews", "editing", "research", "music"],
    "comedy": ["jokes", "timing", "cast", "script", "gags", "ending"],
    "thriller": ["suspense", "twists", "lead actor", "pacing", "camera work", "ending"],
    "animated feature": ["animation", "voice cast", "songs", "story", "colors", "humor"],
    "horror movie": ["scares", "atmosphere", "sound design", "makeup", "plot", "ending"],
    "period drama": ["costumes", "sets", "performances", "dialogue", "pacing", "score"],
    "space adventure": ["effects", "world building", "hero", "battles", "plot", "score"],
}

POSITIVE_ADJ = [
    "great", "excellent", "wonderful", "superb", "solid", "impressive", "fantastic",
    "outstanding", "brilliant", "terrific", "lovely", "pleasant", "fine", "first rate",
]
NEGATIVE_ADJ = [
    "terrible", "awful", "disappointing", "mediocre", "poor", "weak", "annoying",
    "frustrating", "bad", "dreadful", "second rate", "lousy", "horrible",
]
# Words that only fit one domain ("sturdy" plot, "gripping" zipper would read oddly).
DOMAIN_ADJ = {
    (False, True): ["sturdy", "reliable", "smooth", "well made", "comfortable", "handy", "quiet"],
    (False, False): ["flimsy", "cheap", "unreliable", "useless", "clunky", "fragile", "noisy"],
    (True, True): ["gripping", "charming", "clever", "delightful", "moving", "witty", "stunning"],
    (True, False): ["dull", "tedious", "forgettable", "bland", "clumsy", "sloppy", "painful"],
}


def _adj(rng: random.Random, movie: bool, positive: bool) -> str:
    if rng.random() < 0.4:
        return rng.choice(DOMAIN_ADJ[(movie, positive)])
    return rng.choice(POSITIVE_ADJ if positive else NEGATIVE_ADJ)


# Negated words whose polarity flips: "not bad" is mild praise, "not great" a complaint.
NOT_NEGATIVE = ["bad", "terrible", "awful", "disappointing", "a problem", "an issue", "too loud"]
NOT_POSITIVE = ["great", "good", "worth it", "impressive", "what I expected", "very good", "reliable"]

INTENSIFIERS = ["", "", "really ", "truly ", "absolutely ", "remarkably ", "surprisingly ",
                "incredibly ", "pretty ", "quite ", "rather ", "genuinely "]
REVIEWERS = ["I", "My wife", "My son", "My roommate", "We", "My dad", "My sister", "Our team"]

POS_VERDICT = [
    "I would buy it again.", "Highly recommended.", "Worth every penny.", "Five stars from me.",
    "I am very happy with it.", "It made my week.", "No regrets at all.", "Recommended to all my friends.",
]
NEG_VERDICT = [
    "I want my money back.", "Save your money.", "Never again.", "One star.",
    "I regret buying it.", "What a waste of time.", "Avoid it.", "I returned it the next day.",
]
POS_MOVIE_VERDICT = [
    "I would watch it again.", "Go see it.", "A joy from start to finish.", "The audience clapped.",
    "It stayed with me for days.", "Easily the best of the year.",
]
NEG_MOVIE_VERDICT = [
    "I walked out halfway.", "Skip it.", "Two hours I will never get back.", "I nearly fell asleep.",
    "The audience groaned.", "Easily the worst of the year.",
]
POS_VERBS = ["love", "adore", "really like", "enjoy", "cannot stop praising"]
NEG_VERBS = ["hate", "regret buying", "dislike", "am sick of", "gave up on"]
POS_MOVIE_VERBS = ["loved", "adored", "really enjoyed", "was moved by", "had a blast with"]
NEG_MOVIE_VERBS = ["hated", "was bored by", "disliked", "could not sit through", "regretted seeing"]


def _subject(rng: random.Random) -> tuple[str, str, bool]:
    """(thing, aspect, is_movie): a product or a movie and one of its aspects."""
    pool = MOVIES if rng.random() < 0.45 else PRODUCTS
    thing = rng.choice(sorted(pool))
    return thing, rng.choice(pool[thing]), pool is MOVIES


def _two_aspects(rng: random.Random, thing: str, is_movie: bool) -> tuple[str, str]:
    first, second = rng.sample((MOVIES if is_movie else PRODUCTS)[thing], 2)
    return first, second


def _verb(aspect: str) -> str:
    # "the laces are", "the plot is": plural aspects take "are".
    plural = aspect.endswith("s") and not aspect.endswith(("ss", "news", "life", "grip")) and aspect not in {
        "suspense", "brightness"}
    return "are" if plural else "is"


def _plain(rng: random.Random, positive: bool) -> str:
    thing, aspect, movie = _subject(rng)
    adj = _adj(rng, movie, positive)
    intens = rng.choice(INTENSIFIERS)
    if movie:
        verdict = rng.choice(POS_MOVIE_VERDICT if positive else NEG_MOVIE_VERDICT)
        verb = rng.choice(POS_MOVIE_VERBS if positive else NEG_MOVIE_VERBS)
    else:
        verdict = rng.choice(POS_VERDICT if positive else NEG_VERDICT)
        verb = rng.choice(POS_VERBS if positive else NEG_VERBS)
    who = rng.choice(REVIEWERS)
    forms = [
        f"The {aspect} of this {thing} {_verb(aspect)} {intens}{adj}.",
        f"The {aspect} {_verb(aspect)} {intens}{adj}. {verdict}",
        f"This {thing} has {intens}{adj} {aspect}.",
        f"{who} {_conjugate(verb, who, movie)} this {thing}; "
        f"the {aspect} {_verb(aspect)} {adj}.",
        f"What {_a(adj)} {thing}. {verdict}",
        f"{intens.capitalize() or 'Overall, '}{adj} {aspect}, {'and' if positive else 'and'} "
        f"{_adj(rng, movie, positive)} everything else.",
    ]
    return rng.choice(forms)


def _a(word: str) -> str:
    """'a great', 'an awful'."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _conjugate(verb: str, who: str, movie: bool) -> str:
    """Movie verbs are past tense already; product verbs agree with the reviewer."""
    if movie or who == "I":
        return verb
    if who == "We":
        return verb.replace("am ", "are ", 1) if verb.startswith("am ") else verb
    return _third(verb)


def _third(verb: str) -> str:
    """'love' -> 'loves', 'am sick of' -> 'is sick of' for a third-person reviewer."""
    head, _, rest = verb.partition(" ")
    if head == "am":
        head = "is"
    elif head == "cannot" or head == "gave":
        return verb
    elif head == "really":
        return f"really {_third(rest)}"
    else:
        head = head + ("es" if head.endswith(("sh", "ch", "s")) else "s")
    return f"{head} {rest}".strip()


def _negated(rng: random.Random, positive: bool) -> str:
    """Polarity carried by a negation: praise built from negative words and vice versa."""
    thing, aspect, movie = _subject(rng)
    if positive:
        word = rng.choice(NOT_NEGATIVE)
        forms = [
            f"The {aspect} {_verb(aspect)} not {word} at all.",
            f"Honestly, this {thing} is not {word}; the {aspect} {_verb(aspect)} {_adj(rng, movie, True)}.",
            f"I can't complain about the {aspect}.",
            f"Not {word}! The {aspect} actually {'works' if not movie else 'lands'} well.",
            f"I expected the {aspect} to be {_adj(rng, movie, False)}, but it was not.",
            f"This {thing} never disappoints.",
            f"Nothing about the {aspect} is {_adj(rng, movie, False)}.",
        ]
    else:
        word = rng.choice(NOT_POSITIVE)
        forms = [
            f"The {aspect} {_verb(aspect)} not {word}.",
            f"Sadly, this {thing} is not {word}; the {aspect} {_verb(aspect)} {_adj(rng, movie, False)}.",
            f"I would not recommend this {thing}.",
            f"I expected the {aspect} to be {_adj(rng, movie, True)}, but it was not.",
            f"The {aspect} never {'works' if not movie else 'lands'} the way it should.",
            f"Nothing about the {aspect} is {_adj(rng, movie, True)}.",
            f"Not {word} at all, the {aspect} {_verb(aspect)} a letdown.",
        ]
    return rng.choice(forms)


def _mixed(rng: random.Random, positive: bool) -> str:
    """Both polarities in one sentence; the verdict is the clause after 'but'/'although'."""
    thing, _, movie = _subject(rng)
    good_aspect, bad_aspect = _two_aspects(rng, thing, movie)
    good = _adj(rng, movie, True)
    bad = _adj(rng, movie, False)
    if positive:
        forms = [
            f"The {bad_aspect} {_verb(bad_aspect)} {bad}, but the {good_aspect} {_verb(good_aspect)} "
            f"so {good} that I love this {thing} anyway.",
            f"Although the {bad_aspect} {_verb(bad_aspect)} {bad}, overall this {thing} is {good}.",
            f"Despite the {bad} {bad_aspect}, I really enjoyed this {thing}.",
        ]
    else:
        forms = [
            f"The {good_aspect} {_verb(good_aspect)} {good}, but the {bad_aspect} {_verb(bad_aspect)} "
            f"so {bad} that I can't recommend this {thing}.",
            f"Although the {good_aspect} {_verb(good_aspect)} {good}, overall this {thing} is {bad}.",
            f"Despite the {good} {good_aspect}, I really disliked this {thing}.",
        ]
    return rng.choice(forms)


# Share of each kind of sentence; the rest are plain.
KINDS: list[tuple[float, Callable[[random.Random, bool], str]]] = [
    (0.60, _plain),
    (0.25, _negated),
    (0.15, _mixed),
]


def generate_demo(n: int = DEMO_SIZE, seed: int = DEMO_SEED) -> list[dict[str, str]]:
    """`n` unique review rows {"text", "label"}, half positive, in a seeded shuffled order."""
    if n < 2 or n % 2:
        raise ValueError(f"demo size must be an even number of at least 2, got {n}")
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for label in LABELS:
        positive = label == "positive"
        count, attempts = 0, 0
        while count < n // 2:
            attempts += 1
            if attempts > 200 * n:  # the templates cannot make that many distinct sentences
                raise ValueError(f"the demo templates ran out of distinct sentences at {count} {label} rows")
            pick = rng.random()
            for share, make in KINDS:
                if pick < share:
                    break
                pick -= share
            text = " ".join(make(rng, positive).split())
            text = text[0].upper() + text[1:]
            if text in seen:
                continue
            seen.add(text)
            rows.append({"text": text, "label": label})
            count += 1
    rng.shuffle(rows)
    return rows


def demo_examples(rows: list[dict[str, str]] | None = None) -> list[Example]:
    """The demo rows as Examples with ids demo-0 ... demo-799."""
    rows = generate_demo() if rows is None else rows
    return [Example(id=f"demo-{i}", text=row["text"], label=row["label"]) for i, row in enumerate(rows)]


def demo_sha256(rows: list[dict[str, str]] | None = None) -> str:
    """Digest of the generated rows (one JSON object a line), recorded in the data manifest."""
    rows = generate_demo() if rows is None else rows
    payload = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
