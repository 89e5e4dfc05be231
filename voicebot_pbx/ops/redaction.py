"""PII redaction of call records before they are stored: ``Redactor`` masks e-mail
addresses, digit runs and configured names in text and all but the last two digits of a caller
id; ``redact_rows`` applies it (when ``AnalyticsConfig.redact`` is on) to a call row's caller id
and errors and to its turns' transcripts and reply texts."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from voicebot_pbx.config import AnalyticsConfig
from voicebot_pbx.ops.analytics_schema import Row

_DIGIT_WORDS = "zero|oh|one|two|three|four|five|six|seven|eight|nine|double|triple"
_DIGIT_TOKEN = rf"(?:\d+|\b(?:{_DIGIT_WORDS})\b)"
_DIGIT_RUN = re.compile(rf"\+?{_DIGIT_TOKEN}(?:[\s\-./(),]*{_DIGIT_TOKEN})*", re.IGNORECASE)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# What STT makes of a spoken address: "john at example dot com", "john at example.com".
_SPOKEN_EMAIL = re.compile(
    r"\b[\w.+-]+\s+at\s+[\w-]+(?:\s+dot\s+[\w-]+|\.[a-z]{2,})+", re.IGNORECASE
)


class Redactor:
    """Masks PII in text before it is stored: e-mail addresses (written or spoken), runs of
    ``min_digits`` or more digits (written, spoken or mixed: phone, account, card numbers)
    and the configured names (whole words, any case)."""

    def __init__(self, names: Iterable[str] = (), min_digits: int = 3) -> None:
        self.min_digits = min_digits
        cleaned = sorted({n.strip() for n in names if n.strip()}, key=len, reverse=True)
        self._names = (
            re.compile(r"\b(?:" + "|".join(map(re.escape, cleaned)) + r")\b", re.IGNORECASE)
            if cleaned
            else None
        )

    @classmethod
    def from_config(cls, config: AnalyticsConfig) -> Redactor | None:
        return redactor_for(config)

    def _digits(self, match: re.Match[str]) -> str:
        tokens = re.findall(_DIGIT_TOKEN, match.group(0), flags=re.IGNORECASE)
        count = sum(len(t) if t.isdigit() else 1 for t in tokens)
        return "[digits]" if count >= self.min_digits else match.group(0)

    def text(self, text: str) -> str:
        if not text:
            return text
        text = _EMAIL.sub("[email]", text)
        text = _SPOKEN_EMAIL.sub("[email]", text)
        if self._names is not None:
            text = self._names.sub("[name]", text)
        return _DIGIT_RUN.sub(self._digits, text)

    def caller_id(self, value: str | None) -> str | None:
        """Digits masked but the last two (``+44******90``); anything with letters (a SIP
        URI, a display name) is replaced whole."""
        if not value:
            return value
        if re.search(r"[^\d\s+\-().]", value):
            return "[redacted]"
        digits = sum(c.isdigit() for c in value)
        out: list[str] = []
        seen = 0
        for char in value:
            if char.isdigit():
                seen += 1
                out.append(char if seen > digits - 2 else "*")
            else:
                out.append(char)
        return "".join(out)


def redact_rows(redactor: Redactor | None, call: Row, turns: Sequence[Row]) -> None:
    if redactor is None:
        return
    call["caller_id"] = redactor.caller_id(call["caller_id"])
    call["errors"] = [redactor.text(e) for e in call["errors"]]
    for turn in turns:
        turn["transcript"] = redactor.text(turn["transcript"])
        turn["reply_text"] = redactor.text(turn["reply_text"])


@functools.lru_cache(maxsize=16)
def redactor_for(config: AnalyticsConfig) -> Redactor | None:
    """The redactor of ``[analytics]`` (None with ``redact = false``), built once."""
    return Redactor(config.redact_names, config.redact_min_digits) if config.redact else None
