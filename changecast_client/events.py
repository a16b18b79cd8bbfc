"""The events a subscription yields, in the order the server's changes happened.

A subscription yields ``Snapshot`` once (when it loaded one), then ``Change`` after
``Change``; when the server cannot replay a gap, ``ResyncBegin``, a fresh ``Snapshot``
and ``ResyncEnd`` (so a reload is never mistaken for a flood of changes); ``Status``
whenever the connection goes away and comes back. No ``Change`` is yielded twice and none
is skipped: across a reconnect the client resumes from the last ``seq`` it applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Document = dict[str, Any]
Op = Literal["insert", "update", "replace", "delete", "enter", "leave"]
State = Literal["live", "reconnecting", "closed"]


@dataclass(frozen=True)
class Diff:
    """An update's changes: ``set`` maps dotted paths to new (absolute) values, applied in
    order; ``unset`` lists removed paths."""

    set: dict[str, Any] = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Snapshot:
    """The whole matching set as of ``seq``; the view now holds exactly these documents."""

    docs: dict[str, Document]
    seq: int


@dataclass(frozen=True)
class Change:
    """One change. ``doc`` comes with insert, replace and enter; ``diff`` with update;
    delete and leave carry only the ``key``. ``at`` is the change's time (epoch ms)."""

    op: Op
    key: str
    seq: int
    collection: str
    at: int | None = None
    doc: Document | None = None
    diff: Diff | None = None


@dataclass(frozen=True)
class ResyncBegin:
    """The server could not replay what this subscription missed (``reason`` says why); a
    ``Snapshot`` follows, then ``ResyncEnd``."""

    reason: str


@dataclass(frozen=True)
class ResyncEnd:
    """The view is exact again as of ``seq``; live changes follow."""

    seq: int


@dataclass(frozen=True)
class Status:
    """The connection's state: ``reconnecting`` (``detail`` says what was lost, ``attempt``
    counts tries) or ``live`` again (every subscription re-attached)."""

    state: State
    detail: str = ""
    attempt: int = 0


Event = Snapshot | Change | ResyncBegin | ResyncEnd | Status


def new_stock(changed: dict[str, Any] | None, doc: Document | None) -> Any:
    """The stock a products change leaves: from its ``set``, else its whole document."""
    stock = (changed or {}).get("stock")
    if stock is None and isinstance(doc, dict):
        stock = doc.get("stock")
    return stock


def apply(view: dict[str, Document], change: Change) -> None:
    """Apply one change to a view (a dict of documents by key)."""
    if change.op in ("insert", "replace", "enter"):
        if change.doc is not None:
            view[change.key] = change.doc
    elif change.op in ("delete", "leave"):
        view.pop(change.key, None)
    elif change.op == "update" and change.diff is not None:
        doc = view.get(change.key)
        if doc is not None:
            apply_diff(doc, change.diff)


def apply_diff(doc: Document, diff: Diff) -> None:
    """Set and unset dotted paths in place."""
    for path, value in diff.set.items():
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = _step(target, part, create=True)
        _put(target, last, value)
    for path in diff.unset:
        *parents, last = path.split(".")
        target = doc
        for part in parents:
            target = _step(target, part, create=False)
            if target is None:
                break
        else:
            _drop(target, last)


def _step(target: Any, part: str, *, create: bool) -> Any:
    if isinstance(target, list) and part.isdigit():
        index = int(part)
        return target[index] if index < len(target) else None
    if isinstance(target, dict):
        if part not in target or not isinstance(target[part], dict | list):
            if not create:
                return None
            target[part] = {}
        return target[part]
    return None


def _put(target: Any, last: str, value: Any) -> None:
    if isinstance(target, list) and last.isdigit():
        index = int(last)
        if index < len(target):
            target[index] = value
        elif index == len(target):
            target.append(value)
    elif isinstance(target, dict):
        target[last] = value


def _drop(target: Any, last: str) -> None:
    if isinstance(target, dict):
        target.pop(last, None)
    elif isinstance(target, list) and last.isdigit() and int(last) < len(target):
        target[int(last)] = None
