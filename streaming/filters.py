"""The ``where`` language: a small SQL-like filter compiled once to a predicate.

Grammar (keywords are case-insensitive)::

    expr       := term (OR term)*
    term       := factor (AND factor)*
    factor     := NOT factor | '(' expr ')' | comparison
    comparison := path ( ('=' | '!=' | '<>' | '<' | '<=' | '>' | '>=') literal
                       | [NOT] IN '(' literal (',' literal)* ')'
                       | [NOT] LIKE 'pattern'
                       | IS [NOT] NULL )
    literal    := 'string' | number | TRUE | FALSE | NULL

A hand-written recursive-descent parser rather than a parser library: the
grammar is a dozen lines, the errors can name the exact position and what was
expected there, and the engine stays free of a dependency on its hot path.
Expressions compile to closures (never ``eval``).

Semantics are two-valued and type-strict: a comparison with a missing or null
field is false (use ``IS NULL``), numbers compare with numbers and strings
with strings, booleans only with ``=``/``!=``. ``NOT`` negates. ``LIKE`` matches strings against a
pattern where ``%`` is any run of characters and ``_`` any one, ignoring case (as MySQL's
default collations do): ``name LIKE '%kettle%'``; ``NOT LIKE`` holds for a present,
non-null value that does not match. Arrays follow
MongoDB's query rules, so that a REST list (answered by the database) and a live
view (answered here) agree: a path through an array looks into each element, and a
comparison holds when any value reached satisfies it (``items.product_id =
'SKU-1'`` matches an order with a line of SKU-1; ``tags = 'x'`` matches a ``tags``
array containing ``'x'``); ``!=`` and ``NOT IN`` hold when no value does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from streaming.errors import FilterError
from streaming.events import get_path, path_values
from streaming.types import Document

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

MAX_LENGTH = 1_000
MAX_DEPTH = 32

Predicate = Callable[[Document], bool]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<op><>|!=|<=|>=|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_0-9][A-Za-z0-9_]*)*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"AND", "OR", "NOT", "IN", "IS", "LIKE", "NULL", "TRUE", "FALSE"}
_ORDERING = {"<", "<=", ">", ">="}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # string, number, op, punct, word, keyword, end
    text: str
    value: Any
    pos: int


# ---- syntax tree ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Compare:
    """``path op value``."""

    path: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class In:
    """``path [NOT] IN (values)``."""

    path: str
    values: tuple[Any, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class Like:
    """``path [NOT] LIKE 'pattern'`` (``%`` any run, ``_`` one character, any case)."""

    path: str
    pattern: str
    negated: bool


@dataclass(frozen=True, slots=True)
class IsNull:
    """``path IS [NOT] NULL``."""

    path: str
    negated: bool


@dataclass(frozen=True, slots=True)
class And:
    """All of ``items``."""

    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """Any of ``items``."""

    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The negation of ``item``."""

    item: Node


Node = Compare | In | Like | IsNull | And | Or | Not


# ---- tokenizer and parser -------------------------------------------------------------------

def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            start = len(text) - len(text[pos:].lstrip())
            if text[start] == "'":
                raise FilterError("unterminated string: expected a closing '", start)
            raise FilterError(f"unexpected character {text[start]!r}", start)
        kind = match.lastgroup or ""
        raw = match.group(kind)
        start = match.start(kind)
        value: Any = raw
        if kind == "string":
            value = raw[1:-1].replace("''", "'")
        elif kind == "number":
            value = float(raw) if any(c in raw for c in ".eE") else int(raw)
            if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
                raise FilterError(f"integer {raw} is out of range: at most 64 bits "
                                  f"({_INT64_MIN}..{_INT64_MAX})", start)
            if isinstance(value, float) and not math.isfinite(value):
                raise FilterError(f"number {raw} is out of range", start)
        elif kind == "word" and raw.upper() in _KEYWORDS:
            kind, value = "keyword", raw.upper()
        tokens.append(_Token(kind, raw, value, start))
        pos = match.end()
    tokens.append(_Token("end", "end of input", None, len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def _advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def _is_keyword(self, word: str) -> bool:
        return self.token.kind == "keyword" and self.token.value == word

    def _expect(self, description: str, ok: bool) -> _Token:
        if not ok:
            raise FilterError(f"expected {description}, got {self.token.text!r}", self.token.pos)
        return self._advance()

    def parse(self) -> Node:
        node = self._expr()
        self._expect("AND, OR or the end of the expression", self.token.kind == "end")
        return node

    def _expr(self) -> Node:
        items = [self._term()]
        while self._is_keyword("OR"):
            self._advance()
            items.append(self._term())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def _term(self) -> Node:
        items = [self._factor()]
        while self._is_keyword("AND"):
            self._advance()
            items.append(self._factor())
        return items[0] if len(items) == 1 else And(tuple(items))

    def _factor(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"expression nests deeper than {MAX_DEPTH} levels", self.token.pos)
        try:
            if self._is_keyword("NOT"):
                self._advance()
                return Not(self._factor())
            if self.token.kind == "punct" and self.token.text == "(":
                self._advance()
                node = self._expr()
                self._expect("')'", self.token.kind == "punct" and self.token.text == ")")
                return node
            return self._comparison()
        finally:
            self.depth -= 1

    def _comparison(self) -> Node:
        path = self._expect("a field name, NOT or '('", self.token.kind == "word").text
        if self.token.kind == "op":
            op = self._advance().text
            position = self.token.pos
            value = self._literal()
            if value is None:
                raise FilterError(f"NULL cannot be compared with {op}; use IS NULL or "
                                  "IS NOT NULL", position)
            if op in _ORDERING and (isinstance(value, bool) or not isinstance(value, int | float | str)):
                raise FilterError(f"expected a number or a string after {op}", position)
            return Compare(path, "!=" if op == "<>" else op, value)
        negated = False
        if self._is_keyword("NOT"):
            self._advance()
            negated = True
            if self._is_keyword("LIKE"):
                self._advance()
                return Like(path, self._pattern(), negated)
            self._expect("IN or LIKE after NOT", self._is_keyword("IN"))
            return In(path, self._list(), negated)
        if self._is_keyword("LIKE"):
            self._advance()
            return Like(path, self._pattern(), negated)
        if self._is_keyword("IN"):
            self._advance()
            return In(path, self._list(), negated)
        if self._is_keyword("IS"):
            self._advance()
            if self._is_keyword("NOT"):
                self._advance()
                negated = True
            self._expect("NULL", self._is_keyword("NULL"))
            return IsNull(path, negated)
        raise FilterError(
            f"expected a comparison (=, !=, <>, <, <=, >, >=, IN, NOT IN, LIKE, IS) after "
            f"{path!r}, "
            f"got {self.token.text!r}", self.token.pos)

    def _pattern(self) -> str:
        token = self.token
        self._expect("a 'pattern' after LIKE", token.kind == "string")
        return str(token.value)

    def _list(self) -> tuple[Any, ...]:
        self._expect("'(' to open the IN list", self.token.kind == "punct" and self.token.text == "(")
        values = [self._literal()]
        while self.token.kind == "punct" and self.token.text == ",":
            self._advance()
            values.append(self._literal())
        self._expect("',' or ')'", self.token.kind == "punct" and self.token.text == ")")
        return tuple(values)

    def _literal(self) -> Any:
        token = self.token
        if token.kind in {"string", "number"}:
            self._advance()
            return token.value
        if token.kind == "keyword" and token.value in {"TRUE", "FALSE", "NULL"}:
            self._advance()
            return {"TRUE": True, "FALSE": False, "NULL": None}[token.value]
        raise FilterError(f"expected a value (a 'string', a number, TRUE, FALSE or NULL), "
                          f"got {token.text!r}", token.pos)


def parse(text: str) -> Node:
    """Parse a ``where`` expression; raise FilterError naming the position on mistakes."""
    if not isinstance(text, str):
        raise FilterError(f"expected the expression as a string, got {type(text).__name__}", 0)
    if len(text) > MAX_LENGTH:
        raise FilterError(f"expression is {len(text)} characters; the limit is {MAX_LENGTH}",
                          MAX_LENGTH)
    if not text.strip():
        raise FilterError("expected an expression, got an empty string", 0)
    return _Parser(text).parse()


# ---- evaluation -----------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _exact(a: Any, b: Any) -> tuple[Any, Any]:
    # A DECIMAL column (MySQL) against a literal: compare the literal as written (1.1 is
    # Decimal('1.1'), not the binary float nearest to it), as the database would.
    if isinstance(a, Decimal) and isinstance(b, float) and math.isfinite(b):
        return a, Decimal(repr(b))
    if isinstance(b, Decimal) and isinstance(a, float) and math.isfinite(a):
        return Decimal(repr(a)), b
    return a, b


def values_equal(a: Any, b: Any) -> bool:
    """Type-strict equality (numbers compare across int, float and Decimal; bools are not
    numbers)."""
    if a is None or b is None:
        return False
    if _is_number(a) and _is_number(b):
        a, b = _exact(a, b)
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _ordered(a: Any, b: Any, op: str) -> bool:
    if not ((_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))):
        return False
    a, b = _exact(a, b)
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _getter(path: str) -> Callable[[Document], Any]:
    if "." not in path:  # the common case, without the walk
        return lambda doc: doc.get(path)
    return lambda doc: get_path(doc, path)


def _values(path: str) -> Callable[[Document], list[Any]]:
    """The values ``path`` reaches, MongoDB-style (see ``path_values``)."""
    if "." in path:
        return lambda doc: path_values(doc, path)

    def top(doc: Document) -> list[Any]:  # the common case, without the walk
        if path not in doc:
            return []
        value = doc[path]
        return [value, *value] if isinstance(value, list) else [value]

    return top


def like_regex(pattern: str) -> str:
    """The regular expression of a LIKE pattern (anchored; flags i and s apply)."""
    return "^" + "".join(".*" if c == "%" else "." if c == "_" else re.escape(c)
                         for c in pattern) + "$"


def _compile(node: Node) -> Predicate:
    # Each comparison holds when any value the path reaches satisfies it, and a negation
    # when none does: the same answers as the MongoDB query of ``_to_mongo``, so a REST
    # list (answered by the database) and a live view (answered here) agree.
    if isinstance(node, Compare):
        values, value, op = _values(node.path), node.value, node.op
        if op == "=":
            return lambda doc: any(values_equal(v, value) for v in values(doc))
        if op == "!=":
            return lambda doc: bool(found := values(doc)) and not any(
                v is None or values_equal(v, value) for v in found)
        return lambda doc: any(_ordered(v, value, op) for v in values(doc))
    if isinstance(node, In):
        values, options, negated = _values(node.path), node.values, node.negated

        def member(doc: Document) -> bool:
            found = values(doc)
            if negated:
                return bool(found) and not any(
                    v is None or any(values_equal(v, o) for o in options) for v in found)
            return any(values_equal(v, o) for v in found for o in options)

        return member
    if isinstance(node, Like):
        values, negated = _values(node.path), node.negated
        regex = re.compile(like_regex(node.pattern), re.IGNORECASE | re.DOTALL)

        def like(v: Any) -> bool:
            return isinstance(v, str) and regex.match(v) is not None

        if negated:
            return lambda doc: bool(found := values(doc)) and not any(
                v is None or like(v) for v in found)
        return lambda doc: any(like(v) for v in values(doc))
    if isinstance(node, IsNull):
        values = _values(node.path)

        def null(doc: Document) -> bool:
            found = values(doc)
            return not found or any(v is None for v in found)

        if node.negated:
            return lambda doc: not null(doc)
        return null
    if isinstance(node, And):
        parts = [_compile(item) for item in node.items]
        return lambda doc: all(part(doc) for part in parts)
    if isinstance(node, Or):
        parts = [_compile(item) for item in node.items]
        return lambda doc: any(part(doc) for part in parts)
    inner = _compile(node.item)
    return lambda doc: not inner(doc)


def _to_mongo(node: Node) -> Document:
    if isinstance(node, Compare):
        operator = {"=": None, "!=": "$nin", "<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}
        mongo_op = operator[node.op]
        if mongo_op is None:
            return {node.path: node.value}
        if mongo_op == "$nin":
            return {node.path: {"$nin": [node.value, None]}}
        return {node.path: {mongo_op: node.value}}
    if isinstance(node, In):
        if node.negated:
            return {node.path: {"$nin": [*node.values, None]}}
        return {node.path: {"$in": [v for v in node.values if v is not None]}}
    if isinstance(node, Like):
        regex = {"$regex": like_regex(node.pattern), "$options": "is"}
        if node.negated:
            return {node.path: {"$ne": None, "$not": regex}}
        return {node.path: regex}
    if isinstance(node, IsNull):
        return {node.path: {"$ne": None}} if node.negated else {node.path: None}
    if isinstance(node, And):
        return {"$and": [_to_mongo(item) for item in node.items]}
    if isinstance(node, Or):
        return {"$or": [_to_mongo(item) for item in node.items]}
    return {"$nor": [_to_mongo(node.item)]}


def _constraints(node: Node) -> dict[str, frozenset[Any]]:
    """Fields the expression pins to a finite set of values (for routing)."""
    if isinstance(node, Compare) and node.op == "=" and hashable(node.value):
        return {node.path: frozenset([node.value])}
    if isinstance(node, In) and not node.negated and all(hashable(v) for v in node.values):
        return {node.path: frozenset(v for v in node.values if v is not None)}
    if isinstance(node, And):
        merged: dict[str, frozenset[Any]] = {}
        for item in node.items:
            for path, values in _constraints(item).items():
                merged[path] = merged[path] & values if path in merged else values
        return merged
    if isinstance(node, Or):
        branches = [_constraints(item) for item in node.items]
        common = set.intersection(*(set(b) for b in branches)) if branches else set()
        return {path: frozenset().union(*(b[path] for b in branches)) for path in common}
    return {}


def hashable(value: Any) -> bool:
    """True for the literal types an equality index can key on."""
    return isinstance(value, str | int | float | bool)


def index_keys(values: Iterable[Any]) -> list[Any]:
    """The keys under which an equality index finds documents holding ``values``: each
    literal-typed value, and a Decimal (a MySQL DECIMAL) as the int or float literal that
    equals it."""
    keys = []
    for value in values:
        if isinstance(value, str | int | float | bool):
            keys.append(value)
        elif isinstance(value, Decimal) and value.is_finite():
            keys.append(int(value) if value == value.to_integral_value() else float(value))
    return keys


class Filter:
    """A compiled ``where`` expression: ``matches(doc)``, ``mongo``, ``constraints``."""

    __slots__ = ("constraints", "matches", "mongo", "node", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.node = parse(text)
        self.matches: Predicate = _compile(self.node)
        self.mongo: Document = _to_mongo(self.node)
        self.constraints: dict[str, frozenset[Any]] = _constraints(self.node)

    def __repr__(self) -> str:
        return f"Filter({self.text!r})"


def compile_filter(text: str) -> Filter:
    """Parse and compile ``text``; raise FilterError on mistakes."""
    return Filter(text)


def equals_filter(fields: dict[str, Any]) -> Predicate:
    """A predicate for ``field = value AND ...`` with the language's equality rules."""
    items = [(_getter(path), value) for path, value in fields.items()]
    return lambda doc: all(values_equal(get(doc), value) for get, value in items)
