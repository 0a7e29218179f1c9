"""Structured output in the API process: what a request asked for (response_format, nvext's
guided_*, a forced tool call) as llguidance grammar text, checked against this model's tokenizer
before anything is queued, so a grammar the library refuses, or one that takes too long to
build, is a 400 naming the field, never a failure inside the generation loop.

The check runs off the event loop, bounded in time; llguidance's own limits
(nimbuild.serving.constrained.LIMITS) bound the work of building and running a grammar.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from runtime_min.http import ApiError

CHECK_SECONDS = 10.0  # building and checking one request's grammar


class Grammars:
    def __init__(self, tokenizer_json: Path, vocab: int, eos_ids: list[int]):
        self.tokenizer_json, self.vocab, self.eos_ids = tokenizer_json, vocab, eos_ids
        self._masks = None

    def _masks_now(self):
        from nimbuild.serving.constrained import Masks

        if self._masks is None:  # about a second for a large vocabulary, paid by the first request only
            self._masks = Masks(self.tokenizer_json.read_text(encoding="utf-8"), self.vocab, self.eos_ids)
        return self._masks

    async def grammar(self, param: str, kind: str | None, spec: Any) -> str:
        """The checked grammar text for a request's (kind, spec), or for ready grammar text when
        kind is None; a 400 on `param` when it cannot be had."""
        def build() -> str:
            from nimbuild.serving.constrained import grammar_for

            text = spec if kind is None else grammar_for(kind, spec)
            self._masks_now().check(text)
            return text

        try:
            return await asyncio.wait_for(asyncio.to_thread(build), CHECK_SECONDS)
        except asyncio.TimeoutError:
            raise ApiError(400, f"{param}: the grammar takes longer than {CHECK_SECONDS:.0f} s to build", param=param) from None
        except json.JSONDecodeError as e:
            raise ApiError(400, f"{param}: not a JSON schema ({e.msg})", param=param) from None
        except ApiError:
            raise
        except Exception as e:  # llguidance's refusal (invalid, unsatisfiable, over its limits), whatever its type
            raise ApiError(400, f"{param}: the grammar is refused: {_first_line(str(e))}", param=param) from None


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "invalid"
    return line[:500]
