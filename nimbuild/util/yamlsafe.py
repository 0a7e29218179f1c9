"""The one YAML reader for everything nimbuild reads: recipes, manifests (its own and NIM's), NeMo
configs, RMIR metadata.

Safe in three ways PyYAML's `safe_load` is not: duplicate keys are refused (PyYAML silently keeps
the last one, which hides mistakes); aliases are bounded by the size they expand to, so a
"billion laughs" document of a few hundred bytes is refused at once instead of expanding without
limit in whatever walks it later; nesting is bounded, so a deep document is one clear error, not a
RecursionError. It is also about twice as fast as `yaml.load` on large manifests: libyaml composes
the node graph in C and one short walk builds the Python values, where PyYAML's generic
constructor spends most of its time in per-node bookkeeping.
"""

from __future__ import annotations

import gc
from typing import Any, Callable, TypeVar

import yaml

T = TypeVar("T")
Path_ = tuple  # a path into the document: keys and list indices

MAX_DEPTH = 100  # no recipe, manifest or NeMo config nests a tenth as deep
ALIAS_ALLOWANCE = 100_000  # values aliases may add beyond one per byte of the document



class _Composer(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's composer with PyYAML's safe tag resolution, remembered per distinct scalar: a large
    manifest repeats the same few hundred values, and resolving each again by regular expression
    was a quarter of composing it. No path resolvers are registered, so their per-node hooks go."""

    def __init__(self, stream):
        super().__init__(stream)
        self._resolved: dict[tuple[str, tuple[bool, bool]], str] = {}

    def resolve(self, kind, value, implicit):
        if kind is not yaml.ScalarNode:
            return super().resolve(kind, value, implicit)
        key = (value, implicit)
        tag = self._resolved.get(key)
        if tag is None:
            tag = self._resolved[key] = super().resolve(kind, value, implicit)
        return tag

    def descend_resolver(self, current_node, current_index):
        pass

    def ascend_resolver(self):
        pass

_Scalar = yaml.ScalarNode
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_NUMBERS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_COLLECTIONS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class YamlProblem(Exception):
    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.message = message
        self.line = line


def load_yaml(text: str, *, local_tags: bool = False, numbers_as_text: bool = False,
              with_lines: bool = False) -> tuple[Any, dict[Path_, int]]:
    """The document's value, and (with_lines) a map from each value's path to its 1-based line.

    local_tags: read `!name` tags (NIM's `!workspace`) as the plain value beneath them, never run.
    numbers_as_text: keep integers and floats as the text written (a digits-only NIM id keeps its
    leading zeros).
    """
    def value():
        root = _compose(text)
        if root is None:
            return None, {}
        walker = _Walker(len(text), local_tags, numbers_as_text)
        return walker.value(root, () if with_lines else None, 0), walker.lines

    return without_collection(value)


def without_collection(call: Callable[[], T]) -> T:
    """call(), with no cyclic garbage collection meanwhile. Reading a manifest makes hundreds of
    thousands of objects and none is garbage, yet each burst of allocations starts a collection
    that scans them all again: without these passes a 10,000-profile manifest loads several times
    faster. (A function, not a contextlib context manager: under one, the same load measured 50%
    slower here.)"""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return call()
    finally:
        if enabled:
            gc.enable()


def load_with_lines(text: str) -> tuple[Any, dict[Path_, int]]:
    return load_yaml(text, with_lines=True)


def load_or_raise(text: str, origin: str, error: type[Exception], **options: bool) -> Any:
    """load_yaml's value, with any problem raised as `error("origin:line: ...")` in one line."""
    try:
        return load_yaml(text, **options)[0]
    except YamlProblem as e:
        raise error(f"{origin}:{e.line}: {e.message}" if e.line else f"{origin}: {e.message}") from None


def _compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_Composer)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        said = [e.context, e.problem] if e.context and e.problem else [e.problem or str(e)]
        problem = " ".join(", ".join(said).split())
        raise YamlProblem(f"not valid YAML: {problem}", mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise YamlProblem(f"not valid YAML: {' '.join(str(e).split())}", None) from None
    except RecursionError:  # only the pure-Python composer recurses; libyaml stops at 1000 levels itself
        raise YamlProblem(f"not valid YAML: nested deeper than {MAX_DEPTH} levels", None) from None


class _Walker:
    """Builds Python values from composed nodes, counting every value an alias repeats."""

    def __init__(self, text_length: int, local_tags: bool, numbers_as_text: bool):
        self.budget = text_length + ALIAS_ALLOWANCE
        self.local_tags = local_tags
        self.numbers_as_text = numbers_as_text
        self.lines: dict[Path_, int] = {}
        self.done: dict[int, tuple[Any, int]] = {}  # id(node) -> (value, values it holds)
        self.building: set[int] = set()  # collections being built: an alias to one is a cycle
        self.count = 0
        self.constructor = yaml.SafeLoader("")  # for the rare scalar that is not a string

    def value(self, node: yaml.Node, path: Path_ | None, depth: int) -> Any:
        """The node's value; `path` (None when no lines are wanted) is where it sits."""
        if path is not None:
            self.lines[path] = node.start_mark.line + 1
        kind = type(node)
        if kind is _Scalar:  # counted by the collection holding it
            return node.value if node.tag == _STR else self._scalar(node)
        seen = self.done.get(id(node))
        if seen is not None:  # an alias: the same value again, and all it holds counted again
            self._spend(seen[1], node)
            return seen[0]
        if id(node) in self.building:
            raise YamlProblem("an alias refers to a value that contains it (a recursive alias)", node.start_mark.line + 1)
        if depth >= MAX_DEPTH:
            raise YamlProblem(f"nested deeper than {MAX_DEPTH} levels", node.start_mark.line + 1)
        self._check_tag(node, _COLLECTIONS)
        self.building.add(id(node))
        start = self.count
        self._spend(len(node.value), node)
        if kind is yaml.SequenceNode:
            if path is None:
                result: Any = [self.value(child, None, depth + 1) for child in node.value]
            else:
                result = [self.value(child, path + (i,), depth + 1) for i, child in enumerate(node.value)]
        else:
            result = self._mapping(node, path, depth)
        self.building.discard(id(node))
        self.done[id(node)] = (result, self.count - start)
        return result

    def _mapping(self, node: yaml.MappingNode, path: Path_ | None, depth: int) -> dict:
        out: dict[Any, Any] = {}
        merged: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if type(key_node) is _Scalar and key_node.tag == _STR:
                key = key_node.value
            elif key_node.tag == _MERGE:
                merged = {**self._merge_sources(value_node, path, depth), **merged}
                continue
            else:
                key = self._key(key_node)
            if key in out:
                raise YamlProblem(f"duplicate key '{key}'", key_node.start_mark.line + 1)
            if path is None:  # the common case: no lines wanted, so no paths built
                out[key] = self.value(value_node, None, depth + 1)
            else:
                out[key] = self.value(value_node, path + (key,), depth + 1)
                self.lines[path + (key,)] = key_node.start_mark.line + 1
        return {**merged, **out} if merged else out

    def _merge_sources(self, node: yaml.Node, path: Path_ | None, depth: int) -> dict:
        """`<<: *a` or `<<: [*a, *b]`: earlier sources win over later ones, the mapping over all."""
        sources = node.value if type(node) is yaml.SequenceNode else [node]
        merged: dict[Any, Any] = {}
        for source in reversed(sources):
            value = self.value(source, path, depth + 1)
            if not isinstance(value, dict):
                raise YamlProblem("a merge key (<<) must name a mapping or a list of mappings",
                                  source.start_mark.line + 1)
            merged.update(value)
        return merged

    def _key(self, node: yaml.Node) -> Any:
        if type(node) is not yaml.ScalarNode:
            raise YamlProblem("mapping keys must be plain values", node.start_mark.line + 1)
        return self._scalar(node)

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        tag = node.tag
        if tag.startswith("!"):
            self._check_tag(node, ())
            return node.value
        if self.numbers_as_text and tag in _NUMBERS and not node.style:  # plain, not quoted
            return node.value
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.constructor.ConstructorError, ValueError, OverflowError) as e:
            problem = getattr(e, "problem", None) or e
            raise YamlProblem(f"unsupported YAML value: {problem}", node.start_mark.line + 1) from None

    def _check_tag(self, node: yaml.Node, allowed: tuple[str, ...]) -> None:
        tag = node.tag
        if tag in allowed or (self.local_tags and tag.startswith("!")):
            return
        raise YamlProblem(f"unsupported YAML tag {tag}", node.start_mark.line + 1)

    def _spend(self, values: int, node: yaml.Node) -> None:
        self.count += values
        if self.count > self.budget:
            raise YamlProblem(f"aliases expand to more than {self.budget:,} values; refused (an alias bomb?)",
                              node.start_mark.line + 1)
