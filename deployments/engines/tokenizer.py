"""Whisper's tokens over a ``tokenizer.json``: special ids, prompts, words.

The same rules as openai-whisper and faster-whisper, written over the
``tokenizers`` package alone, so every engine (and a machine without
faster-whisper) shares them.
"""

from __future__ import annotations

from functools import cached_property

import tokenizers

from deployments.engines.contract import MAX_LENGTH

# Languages written without spaces: words split where tokens decode to whole characters.
_NO_SPACES = {"zh", "ja", "th", "lo", "my", "yue"}
_REPLACEMENT = "\ufffd"


def load(path: str) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(path)


class WhisperTokenizer:
    """One language and task of a Whisper vocabulary."""

    def __init__(
        self, tokenizer: tokenizers.Tokenizer, *, multilingual: bool, language: str, task: str
    ) -> None:
        self.tokenizer = tokenizer
        self.language_code = language
        self.multilingual = multilingual
        if multilingual:
            self.language: int | None = self._id(f"<|{language}|>")
            self.task: int | None = self._id(f"<|{task}|>")
        else:
            self.language = self.task = None

    def _id(self, token: str) -> int:
        found = self.tokenizer.token_to_id(token)
        if found is None:
            raise ValueError(f"{token} is not in this model's vocabulary")
        return int(found)

    @cached_property
    def sot(self) -> int:
        return self._id("<|startoftranscript|>")

    @cached_property
    def sot_prev(self) -> int:
        return self._id("<|startofprev|>")

    @cached_property
    def eot(self) -> int:
        return self._id("<|endoftext|>")

    @cached_property
    def no_timestamps(self) -> int:
        return self._id("<|notimestamps|>")

    @cached_property
    def no_speech(self) -> int:
        found = self.tokenizer.token_to_id("<|nospeech|>")
        return int(found) if found is not None else self._id("<|nocaptions|>")

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1

    @property
    def sot_sequence(self) -> list[int]:
        return [self.sot] + [t for t in (self.language, self.task) if t is not None]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode([t for t in tokens if t < self.eot]))

    def prompt(self, initial_prompt: str | None, hotwords: str | None = None) -> list[int]:
        """The decoder prompt: hotwords and previous text (each at most half the
        context, as faster-whisper builds it), then the start."""
        half = MAX_LENGTH // 2 - 1
        favoured = self.encode(" " + hotwords.strip())[:half] if hotwords else []
        previous = self.encode(" " + initial_prompt.strip())[-half:] if initial_prompt else []
        head = [self.sot_prev, *favoured, *previous] if favoured or previous else []
        return head + self.sot_sequence

    def after(self, prompt: list[int], text: list[int]) -> list[int]:
        """``prompt`` with ``text`` added to its previous text (a decode that goes on
        where the last one stopped reads what came before, as faster-whisper's
        ``condition_on_previous_text`` does)."""
        start = prompt.index(self.sot)
        previous = [*prompt[1:start], *[t for t in text if t < self.eot]]
        return [self.sot_prev, *previous[-(MAX_LENGTH // 2 - 1) :], *prompt[start:]]

    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Words and their tokens; a word starts with a space or is punctuation."""
        if self.language_code in _NO_SPACES:
            return self._split_on_unicode(tokens)
        subwords, subword_tokens = self._split_on_unicode(tokens)
        words: list[str] = []
        word_tokens: list[list[int]] = []
        for subword, pieces in zip(subwords, subword_tokens, strict=True):
            special = pieces[0] >= self.eot
            with_space = subword.startswith(" ")
            punctuation = subword.strip() in _PUNCTUATION
            if special or with_space or punctuation or not words:
                words.append(subword)
                word_tokens.append(list(pieces))
            else:
                words[-1] += subword
                word_tokens[-1].extend(pieces)
        return words, word_tokens

    def _text(self, tokens: list[int]) -> str:
        """Tokens decoded as text (special tokens decode to nothing)."""
        return str(self.tokenizer.decode(tokens))

    def _split_on_unicode(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Cut where the tokens so far decode to whole characters."""
        full = self._text(tokens)
        words: list[str] = []
        word_tokens: list[list[int]] = []
        current: list[int] = []
        offset = 0
        for token in tokens:
            current.append(token)
            decoded = self._text(current)
            bad = decoded.find(_REPLACEMENT)
            if bad < 0 or (offset + bad < len(full) and full[offset + bad] == _REPLACEMENT):
                words.append(decoded)
                word_tokens.append(current)
                current = []
                offset += len(decoded)
        return words, word_tokens


_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
