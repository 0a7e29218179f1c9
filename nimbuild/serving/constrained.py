"""Constrained decoding: a token mask per generation step from llguidance (docs/libraries.md says
why that library), for structured output (JSON schema, regex, choice, Lark grammar) and for tool
calls the request makes required.

A grammar arrives as llguidance's own grammar text (`grammar_for` makes it from what a request
asked for, in the API process, where it is also checked and refused with a 400); each sequence
that has one gets a `Constraint`, whose mask the generator applies to that row's logits next to
the sampler, and which consumes each token the row samples. Rows without one in the same batch are
untouched.

This module imports numpy only; llguidance is imported inside the functions that need it.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np

# Bounds on what a request's grammar may cost to build and to run (llguidance's parser limits):
# a hostile schema is refused when checked instead of stalling the generation loop
LIMITS = {"max_items_in_row": 2000, "initial_lexer_fuel": 1_000_000, "step_lexer_fuel": 200_000,
          "step_max_items": 50_000, "max_lexer_states": 50_000, "max_grammar_size": 500_000}


class GrammarError(ValueError):
    """A grammar llguidance refuses (invalid, unsatisfiable, over the limits)."""


def grammar_for(kind: str, spec: Any) -> str:
    """llguidance grammar text for a request's constraint: kind `json` (a JSON schema, a dict or its
    text), `regex`, `choice` (a list of strings, one of which the output is), or `lark` (an EBNF
    grammar: Lark, llguidance's dialect, or GBNF)."""
    from llguidance import LLMatcher

    if kind == "json":
        schema = spec if isinstance(spec, dict) else json.loads(spec)
        # compact JSON: no free-form whitespace for a model to ramble in
        return LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    if kind == "regex":
        return LLMatcher.grammar_from_regex(spec)
    if kind == "choice":
        options = " | ".join(json.dumps(option, ensure_ascii=False) for option in spec)
        return LLMatcher.grammar_from_lark(f"start: {options}\n")
    if kind == "lark":  # or GBNF (llama.cpp's, which vLLM's xgrammar backend takes): rules with ::=
        from llguidance.gbnf_to_lark import gbnf_to_lark

        return LLMatcher.grammar_from_lark(gbnf_to_lark(spec) if "::=" in spec else spec)
    raise GrammarError(f"no grammar kind {kind!r}")


class Masks:
    """What every constraint of one model shares: llguidance's view of the tokenizer (built once,
    about a second for a large vocabulary) and the graph's vocabulary width."""

    def __init__(self, tokenizer_json: str, vocab: int, eos_ids: Iterable[int]):
        from llguidance import LLTokenizer

        eos = sorted(eos_ids)
        self.tokenizer = LLTokenizer(tokenizer_json, n_vocab=vocab, eos_token=eos or None)
        self.vocab = vocab

    def check(self, grammar: str) -> None:
        """Refuse a grammar llguidance cannot build within the limits, with its reason."""
        from llguidance import LLMatcher

        error, messages = LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer, limits=_limits())
        if error:
            raise GrammarError(messages[0] if messages else "the grammar is invalid")

    def constraint(self, grammar: str) -> "Constraint":
        from llguidance import LLMatcher

        matcher = LLMatcher(self.tokenizer, grammar, log_level=0, limits=_limits())
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return Constraint(matcher, self.vocab)


class Constraint:
    """One sequence's grammar state."""

    def __init__(self, matcher, vocab: int):
        self.matcher, self.vocab = matcher, vocab

    def mask(self, logits: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
        """The logits with every token the grammar does not allow next set to -inf (a copy). Where
        the processors left no allowed token a finite score (min_tokens holding back the
        end-of-sequence a complete grammar allows, and nothing else), `fallback`'s scores (the
        unprocessed logits) are masked instead: the grammar wins."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[:len(logits)].astype(bool)
        if not allowed.any():  # only reachable in an error state: end-of-sequence is always allowed at the end
            raise GrammarError(self.matcher.get_error() or "the grammar allows no token here")
        masked = np.where(allowed, logits, -np.inf).astype(logits.dtype, copy=False)
        if fallback is not None and not np.isfinite(masked).any():
            masked = np.where(allowed, fallback, -np.inf).astype(logits.dtype, copy=False)
        return masked

    def advance(self, token: int) -> bool:
        """Consume the sampled token; True when the grammar is complete and allows nothing more."""
        if not self.matcher.consume_token(token):
            raise GrammarError(self.matcher.get_error() or f"token {token} is not allowed here")
        return self.matcher.is_stopped()


def _limits():
    from llguidance import LLParserLimits

    return LLParserLimits(**LIMITS)
