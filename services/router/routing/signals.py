"""Prompt signals: words and quoted text that say a prompt needs a better tier than its stage's.

Kept apart from the decisions that use them: the keyword lists come from the policy file, and
matching them is text work with its own rules (whole words, any spacing, any case).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["SIGNAL_LABELS", "PromptSignals"]

#: Each keyword signal of the policy file and how a decision's reason names it.
SIGNAL_LABELS: Mapping[str, str] = {
    "materials": "fine material",
    "reflections": "reflections",
    "many_subjects": "many subjects",
}
_QUOTED = re.compile(r"\"([^\"\n]*\S[^\"\n]*)\"|\u201c([^\u201d\n]*\S[^\u201d\n]*)\u201d")


@dataclass(frozen=True)
class PromptSignals:
    """Keyword rules that spot prompts needing a better tier.

    `quoted_text`: text between double quotes (straight or curly) is text to draw in the image.
    `keywords` maps a signal ("materials", "reflections", "many_subjects") to words or phrases
    matched whole, ignoring case, with any run of spaces between the words of a phrase.
    """

    quoted_text: bool
    keywords: Mapping[str, tuple[str, ...]]
    _patterns: Mapping[str, re.Pattern[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        patterns = {
            signal: re.compile(
                r"(?<!\w)(?:"
                + "|".join(
                    r"\s+".join(re.escape(word) for word in phrase.split())
                    for phrase in sorted(phrases, key=len, reverse=True)
                )
                + r")(?!\w)",
                re.IGNORECASE,
            )
            for signal, phrases in self.keywords.items()
            if phrases
        }
        object.__setattr__(self, "_patterns", patterns)

    def detect(self, prompt: str) -> tuple[str, ...]:
        """The signals found in `prompt`, each described with the words that matched."""
        found: list[str] = []
        if self.quoted_text:
            quoted = _QUOTED.search(prompt)
            if quoted:
                text = quoted.group(1) or quoted.group(2)
                found.append(f"text in quotes ({_shorten(text)!r})")
        for signal, pattern in self._patterns.items():
            match = pattern.search(prompt)
            if match:
                found.append(f"{SIGNAL_LABELS[signal]} ({match.group(0)!r})")
        return tuple(found)


def _shorten(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
