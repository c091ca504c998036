"""YAML read safely: duplicate and non-scalar keys, numbers out of range, nesting too deep and
alias bombs are each reported with their line and column, all at once, before anything is built
from the document."""

from __future__ import annotations

import math
from typing import Any

import yaml

from scenarios.base import shown

MAX_DEPTH = 64  # nesting of mappings and lists, aliases expanded
MAX_NODES = 20_000  # values in the document with every alias expanded (alias bombs)
MAX_INT_DIGITS = 18  # larger integers are refused before conversion (no int fits a field)


def _where(node: yaml.Node | yaml.Event) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(no position)"


try:  # libyaml parses in C: linear time on any input (pure-Python PyYAML is slow on some)
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]


class _UniqueKeyLoader(_SafeLoader):
    """SafeLoader that rejects duplicate and non-scalar mapping keys and out-of-range numbers,
    collecting each problem (with its line and column) instead of stopping at the first."""

    def __init__(self, stream: str, lines: dict[str, int] | None = None):
        super().__init__(stream)
        self.problems: list[str] = []
        self.keys: list[str] = []  # the field path to the value being constructed
        self.lines = lines  # where given: each mapping key's dotted path -> its line

    def problem(self, node: yaml.Node, text: str) -> None:
        where = f"{_where(node)}: " + (".".join(self.keys) + ": " if self.keys else "")
        self.problems.append(where + text)


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            kind = "mapping" if isinstance(key_node, yaml.MappingNode) else "list"
            loader.problem(key_node, f"a {kind} as a mapping key; keys must be plain names")
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            loader.problem(key_node, f"duplicate key {shown(key)}")
            continue
        loader.keys.append(str(key)[:40])
        if loader.lines is not None:
            loader.lines.setdefault(".".join(loader.keys), key_node.start_mark.line + 1)
        seen[key] = loader.construct_object(value_node, deep=True)
        loader.keys.pop()
    return seen


def _construct_int(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> int | None:
    digits = sum(c.isalnum() for c in str(node.value))
    if digits > MAX_INT_DIGITS:
        loader.problem(
            node, f"integer with {digits} digits is out of range (at most {MAX_INT_DIGITS} digits)"
        )
        return None
    return int(loader.construct_yaml_int(node))


def _construct_float(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> float | None:
    value = float(loader.construct_yaml_float(node))
    if not math.isfinite(value):
        loader.problem(node, f"{shown(node.value)} is not a finite number; give a number")
        return None
    return value


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _check_events(text: str) -> list[str]:
    """Nesting deeper than MAX_DEPTH, or far more than MAX_NODES values, in the text itself,
    found from the event stream (no recursion), before composing the document."""
    depth = 0
    for n, event in enumerate(yaml.parse(text, Loader=_SafeLoader)):
        if n > 2 * MAX_NODES:  # an event starts and one ends each collection
            return [
                f"{_where(event)}: more than {MAX_NODES:,} "
                "values in the document; a scenario needs far fewer"
            ]
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                return [
                    f"{_where(event)}: nested deeper than {MAX_DEPTH} levels; flatten the document"
                ]
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return []


def _check_graph(root: yaml.Node) -> list[str]:
    """The document's size and depth with every alias expanded, bounded by MAX_NODES and
    MAX_DEPTH (an alias bomb is small as text and huge expanded), and no alias to itself.
    Iterative post-order walk; each node's expanded (size, depth) is computed once."""
    done: dict[int, tuple[int, int]] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        children = _children(node)
        if expanded:
            open_.discard(key)
            size = 1 + sum(done[id(c)][0] for c in children)
            depth = 1 + max((done[id(c)][1] for c in children), default=0)
            if size > MAX_NODES:
                return [
                    f"{_where(node)}: expands to more than {MAX_NODES:,} values with its "
                    "aliases (&anchor / *alias) expanded; use fewer aliases"
                ]
            if depth > MAX_DEPTH:
                return [f"{_where(node)}: nested deeper than {MAX_DEPTH} levels through aliases"]
            done[key] = (size, depth)
            continue
        if key in done:
            continue
        if key in open_:
            return [f"{_where(node)}: an alias refers to the value that contains it"]
        open_.add(key)
        stack.append((node, True))
        for c in children:
            if id(c) in open_:
                return [f"{_where(c)}: an alias refers to the value that contains it"]
            if id(c) not in done:
                stack.append((c, False))
    return []


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str, lines: dict[str, int] | None = None) -> tuple[Any, list[str]]:
    """The YAML document in `text` and the problems found in it (depth, alias expansion,
    keys, numbers), each with its line and column; the data is None when unusable.
    yaml.YAMLError for text that is not YAML. `lines`, where given, receives the line of each
    mapping key by its dotted path (`gpus.H100.memory_gib`), for messages about values."""
    problems = _check_events(text)
    if problems:
        return None, problems
    loader = _UniqueKeyLoader(text, lines)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, []
        problems = _check_graph(root)
        if problems:
            return None, problems
        data = loader.construct_document(root)
    finally:
        loader.dispose()
    return (None, loader.problems) if loader.problems else (data, [])
