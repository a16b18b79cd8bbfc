from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.errors import FilterError
from streaming.filters import MAX_DEPTH, compile_filter

ORDER = {"_id": "ORD-1", "status": "paid", "total_cents": 12_500, "user_id": "u1",
         "payment": {"state": "captured", "tries": 2}, "gift": False, "note": None}


@pytest.mark.parametrize(("where", "expected"), [
    ("status = 'paid'", True),
    ("status IN ('pending', 'paid') AND total_cents >= 10000", True),
    ("status NOT IN ('pending', 'paid')", False),
    ("total_cents > 12500 OR payment.state = 'captured'", True),
    ("NOT (total_cents < 100)", True),
    ("status <> 'paid'", False),
    ("status != 'shipped'", True),
    ("payment.tries <= 2 AND payment.tries >= 2", True),
    ("note IS NULL AND missing IS NULL AND status IS NOT NULL", True),
    ("gift = FALSE", True),
    ("gift = 0", False),  # booleans are not numbers
    ("total_cents = '12500'", False),  # nor are strings
    ("missing != 'x'", False),  # a comparison with a missing field is false
    ("total_cents = 12500.0", True),
    ("status = 'it''s'", False),
    ("(status = 'paid' OR status = 'x') AND NOT gift = TRUE", True),
    ("status in ('PAID') or Total_Cents > 0", False),  # keywords any case, fields exact
    ("status LIKE 'pa%'", True),
    ("status like 'PA_D'", True),  # any case; _ is one character
    ("status LIKE 'pa'", False),  # the whole value
    ("status LIKE 'p%d' AND user_id NOT LIKE 'x%'", True),
    ("total_cents LIKE '12%'", False),  # strings only
    ("missing NOT LIKE 'x%'", False),  # like != : a missing field is not "not like"
    ("payment.state LIKE '%tur%'", True),
    ("status LIKE 'pa.d'", False),  # regex characters are literal
])
def test_filter_semantics(where: str, expected: bool) -> None:
    assert compile_filter(where).matches(ORDER) is expected


@pytest.mark.parametrize(("where", "position", "fragment"), [
    ("status = ", 9, "expected a value"),
    ("status == 'a'", 8, "expected a value"),
    ("status 'a'", 7, "expected a comparison"),
    ("(status = 'a'", 13, "expected ')'"),
    ("status = 'a' AND", 16, "expected a field name"),
    ("status = 'a' extra", 13, "expected AND, OR"),
    ("status = NULL", 9, "IS NULL"),
    ("total < TRUE", 8, "number or a string"),
    ("status IN 'a'", 10, "'(' to open"),
    ("status = 'a' ; DROP", 13, "unexpected character ';'"),
    ("1 = 1", 0, "expected a field name"),
    ("", 0, "empty"),
    ("status = 'unterminated", 9, "unterminated string"),
    ("status LIKE 5", 12, "a 'pattern' after LIKE"),
    ("status NOT = 'a'", 11, "IN or LIKE after NOT"),
])
def test_filter_errors_name_position_and_expectation(where: str, position: int,
                                                     fragment: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_filter(where)
    assert info.value.position == position
    assert fragment in str(info.value)


def test_filter_limits_length_and_nesting() -> None:
    with pytest.raises(FilterError, match="limit is 1000"):
        compile_filter("a = 1 OR " * 120 + "a = 1")
    deep = "(" * (MAX_DEPTH + 1) + "a = 1" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(FilterError, match="deeper than 32"):
        compile_filter(deep)
    ok = "(" * (MAX_DEPTH - 1) + "a = 1" + ")" * (MAX_DEPTH - 1)
    assert compile_filter(ok).matches({"a": 1})


def test_filter_translates_to_mongo() -> None:
    f = compile_filter("status IN ('a', 'b') AND NOT total >= 5 OR x IS NULL")
    assert f.mongo == {"$or": [
        {"$and": [{"status": {"$in": ["a", "b"]}}, {"$nor": [{"total": {"$gte": 5}}]}]},
        {"x": None},
    ]}
    assert compile_filter("a != 1").mongo == {"a": {"$nin": [1, None]}}
    assert compile_filter("name LIKE '%a.b_'").mongo == {
        "name": {"$regex": "^.*a\\.b.$", "$options": "is"}}
    assert compile_filter("name NOT LIKE 'x%'").mongo == {
        "name": {"$ne": None, "$not": {"$regex": "^x.*$", "$options": "is"}}}


def test_filter_equality_constraints_for_routing() -> None:
    assert compile_filter("user_id = 'u1' AND total > 5").constraints == {
        "user_id": frozenset({"u1"})}
    assert compile_filter("status IN ('a','b') AND status = 'a'").constraints == {
        "status": frozenset({"a"})}
    assert compile_filter("k = 1 OR k = 2").constraints == {"k": frozenset({1, 2})}
    assert compile_filter("k = 1 OR j = 2").constraints == {}
    assert compile_filter("NOT k = 1").constraints == {}


# ---- property test: compiled predicate vs a straightforward reference evaluator ----------

FIELDS = ["a", "b", "n.c"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["x", "y", "it's"]),
                    st.sampled_from([0.5, 2.0]))
literals = st.one_of(st.booleans(), st.integers(-3, 3), st.sampled_from(["x", "y", "it's"]),
                     st.sampled_from([0.5, 2.0]))
ordered_literals = st.one_of(st.integers(-3, 3), st.sampled_from(["x", "y"]), st.just(0.5))


def lit(value: Any) -> str:
    if value is True:
        return "TRUE"
    if value is False:
        return "FALSE"
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def ref_get(doc: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)  # type: ignore[assignment]
    return doc


def ref_eq(x: Any, y: Any) -> bool:
    if x is None or y is None:
        return False
    num = (int, float)
    if isinstance(x, bool) or isinstance(y, bool):
        return type(x) is type(y) and x == y
    if isinstance(x, num) and isinstance(y, num):
        return x == y
    return type(x) is type(y) and x == y


def ref_cmp(x: Any, op: str, y: Any) -> bool:
    if x is None or isinstance(x, bool):
        return False
    both_num = isinstance(x, int | float) and isinstance(y, int | float)
    both_str = isinstance(x, str) and isinstance(y, str)
    if not (both_num or both_str):
        return False
    return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["cmp", "ord", "in", "null", "and", "or", "not"]
                                if depth < 3 else ["cmp", "ord", "in", "null"]))
    field = draw(st.sampled_from(FIELDS))
    if kind == "cmp":
        op = draw(st.sampled_from(["=", "!=", "<>"]))
        value = draw(literals)
        if op == "=":
            return f"{field} = {lit(value)}", lambda d: ref_eq(ref_get(d, field), value)
        return (f"{field} {op} {lit(value)}",
                lambda d: ref_get(d, field) is not None and not ref_eq(ref_get(d, field), value))
    if kind == "ord":
        op = draw(st.sampled_from(["<", "<=", ">", ">="]))
        value = draw(ordered_literals)
        return f"{field} {op} {lit(value)}", lambda d: ref_cmp(ref_get(d, field), op, value)
    if kind == "in":
        values = draw(st.lists(literals, min_size=1, max_size=3))
        negated = draw(st.booleans())
        text = f"{field} {'NOT IN' if negated else 'IN'} ({', '.join(lit(v) for v in values)})"

        def member(d: dict[str, Any]) -> bool:
            v = ref_get(d, field)
            if v is None:
                return False
            found = any(ref_eq(v, x) for x in values)
            return not found if negated else found

        return text, member
    if kind == "null":
        negated = draw(st.booleans())
        if negated:
            return f"{field} IS NOT NULL", lambda d: ref_get(d, field) is not None
        return f"{field} IS NULL", lambda d: ref_get(d, field) is None
    if kind == "not":
        text, fn = draw(expressions(depth + 1))
        return f"NOT ({text})", lambda d: not fn(d)
    left_text, left = draw(expressions(depth + 1))
    right_text, right = draw(expressions(depth + 1))
    if kind == "and":
        return f"({left_text}) AND ({right_text})", lambda d: left(d) and right(d)
    return f"({left_text}) OR ({right_text})", lambda d: left(d) or right(d)


documents = st.fixed_dictionaries({}, optional={
    "a": scalars, "b": scalars, "n": st.one_of(scalars, st.fixed_dictionaries({}, optional={"c": scalars})),
})


@settings(max_examples=400, deadline=None)
@given(expressions(), st.lists(documents, min_size=1, max_size=5))
def test_filter_matches_reference_evaluator(expr: tuple[str, Any], docs: list[dict[str, Any]]) -> None:
    text, reference = expr
    compiled = compile_filter(text)
    for doc in docs:
        assert compiled.matches(doc) == bool(reference(doc)), (text, doc)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_filter_parser_never_crashes_on_garbage(text: str) -> None:
    try:
        compile_filter(text)
    except FilterError as exc:
        assert 0 <= exc.position <= len(text)
