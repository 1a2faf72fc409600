"""Per-row decoding state: generated tokens to text deltas, `stop` strings, budgets, finish reasons.

`RowText` is fed one token id at a time and says when its row is done. The text it emits, joined,
equals the final answer, which equals `describe`'s (special tokens skipped, stripped) cut before the
first stop string. It holds back what could still change: an incomplete UTF-8 sequence (decoded as
U+FFFD), trailing whitespace (the answer is stripped) and a tail that may begin a stop string.
"""

from __future__ import annotations

REPLACEMENT_CHAR = "\ufffd"


class RowText:
    """The text side of one generated row.

    Args:
        tokenizer: decodes the row's token ids (`skip_special_tokens=True`).
        eos_ids: token ids that end the row (not part of the text).
        max_tokens: the row's budget; reaching it finishes with `"length"`.
        stop: strings that end the answer (excluded from it); finish reason `"stop"`.
    """

    def __init__(self, tokenizer, eos_ids: set[int], max_tokens: int, stop: list[str]):
        self._tokenizer = tokenizer
        self._eos_ids = eos_ids
        self._max_tokens = max_tokens
        self._stop = stop
        self.tokens: list[int] = []
        self.sent = ""
        self.finish_reason: str | None = None
        self._text = ""

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int) -> str:
        """Take the next token; returns the new text to send (possibly empty). Sets `finish_reason`
        when the row ends (eos, a stop string, or the budget)."""
        self.tokens.append(token)
        if token in self._eos_ids:
            self.finish_reason = "stop"
            return ""
        self._text = self._tokenizer.decode(self.tokens, skip_special_tokens=True)
        for stop in self._stop:
            cut = self._text.find(stop)
            if cut >= 0:
                self._text = self._text[:cut]
                self.finish_reason = "stop"
        if len(self.tokens) >= self._max_tokens and self.finish_reason is None:
            self.finish_reason = "length"
        return "" if self.done else self._advance(self._ready_text())

    def cancel(self) -> None:
        """End the row now (its client went away); nothing more is sent."""
        self.finish_reason = "cancelled"

    def final_text(self) -> str:
        """The whole answer (call once the row is done)."""
        return self._text.strip()

    def final_delta(self) -> str:
        """What is left to send once the row is done."""
        return self._advance(self.final_text())

    def _ready_text(self) -> str:
        text = self._text.lstrip()
        if text.endswith(REPLACEMENT_CHAR):
            text = text.rstrip(REPLACEMENT_CHAR)
        text = text.rstrip()
        for stop in self._stop:  # a tail that could begin a stop string waits for the next token
            for length in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:length]):
                    text = text[:-length]
                    break
        return text

    def _advance(self, text: str) -> str:
        if not text.startswith(self.sent):  # a decode that rewrote emitted text: send nothing more until it agrees
            return ""
        delta = text[len(self.sent):]
        self.sent = text
        return delta
