"""The embedded default corpus: procedural English-like text that needs no download.

Every machine must derive the same bytes (the genesis manifest, and with it the network id, hangs
on them), so the generator uses its own fixed PRNG (splitmix64) rather than ``random``, and only
integer arithmetic. The text mixes simple grammar (subject-verb-object sentences with adjectives),
small-number arithmetic stated in words and digits, and short stories that track a count across a
sentence. A byte-level model learns the spelling within a few dozen steps and the structure within a
few hundred, so a falling loss is visible on a 2-core machine.
"""

from __future__ import annotations

__all__ = ["SplitMix64", "default_corpus_shards"]

_MASK = (1 << 64) - 1

NAMES = ("ada", "bo", "cy", "dee", "eli", "fay", "gus", "hal", "ivy", "jo", "kim", "lu")
ANIMALS = ("cat", "dog", "fox", "owl", "hen", "bee", "eel", "yak", "ram", "bat")
THINGS = ("apple", "stone", "book", "cup", "key", "coin", "shell", "leaf", "jar", "pen")
ADJS = ("red", "big", "old", "shy", "quick", "small", "green", "calm", "wet", "odd")
VERBS = ("sees", "finds", "likes", "chases", "helps", "follows", "greets", "hears")
PLACES = ("river", "hill", "barn", "road", "garden", "market", "forest", "lake")
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]


class SplitMix64:
    """A tiny, fully specified PRNG: the same sequence on every platform and Python version."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n  # bias < 2**-50 for the small n used here

    def pick(self, seq: tuple[str, ...] | list[str]) -> str:
        return seq[self.below(len(seq))]


def _sentence(r: SplitMix64) -> str:
    kind = r.below(4)
    if kind == 0:
        return (
            f"the {r.pick(ADJS)} {r.pick(ANIMALS)} {r.pick(VERBS)} "
            f"the {r.pick(ADJS)} {r.pick(ANIMALS)} near the {r.pick(PLACES)}."
        )
    if kind == 1:
        a, b = r.below(10), r.below(10)
        return f"{NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}. {a}+{b}={a + b}."
    if kind == 2:
        who, other, thing = r.pick(NAMES), r.pick(NAMES), r.pick(THINGS)
        have = 2 + r.below(9)
        give = 1 + r.below(have - 1)
        return (
            f"{who} has {have} {thing}s and gives {give} to {other}, "
            f"so {who} has {have - give} {thing}s left."
        )
    start = r.below(15)
    run = " ".join(NUMBER_WORDS[start : start + 3 + r.below(4)])
    return f"{r.pick(NAMES)} counts: {run}."


def default_corpus_shards(seed: int = 1, n_shards: int = 24, shard_size: int = 1 << 16) -> list[bytes]:
    """``n_shards`` shards of ``shard_size`` bytes each, a pure function of the arguments."""
    r = SplitMix64(seed)
    shards: list[bytes] = []
    for _ in range(n_shards):
        parts: list[str] = []
        size = 0
        while size < shard_size:
            line = _sentence(r) + ("\n" if r.below(6) == 0 else " ")
            parts.append(line)
            size += len(line)
        shards.append("".join(parts).encode("ascii")[:shard_size])
    return shards
