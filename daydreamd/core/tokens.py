"""How many tokens a text is, roughly, when no tokenizer is at hand (pure).

One definition of "about 4 characters a token" for everything that estimates: plans (input
sizes before anything is spent) and the offline providers (the usage their replies report).
"""

from __future__ import annotations

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """A rough token count, never zero: what estimates use when no tokenizer is at hand."""
    return max(1, len(text) // CHARS_PER_TOKEN)
