"""Normalized change events: one immutable shape for MongoDB's and NX-27017's changes."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bson import Binary, ObjectId, Timestamp

from streaming.types import Document, Op

_MISSING = object()


@dataclass(frozen=True, slots=True)
class Changes:
    """What an update did: dotted path -> new value, and the removed paths."""

    set: dict[str, Any] = field(default_factory=dict)
    unset: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.unset)

    def as_dict(self) -> dict[str, Any]:
        """The wire form ``{"set": {...}, "unset": [...]}``."""
        return {"set": self.set, "unset": list(self.unset)}

    def without(self, fields: frozenset[str]) -> Changes:
        """These changes minus every path under the top-level ``fields``."""
        return Changes({p: v for p, v in self.set.items() if p.split(".", 1)[0] not in fields},
                       tuple(p for p in self.unset if p.split(".", 1)[0] not in fields))


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change as the engine emits it; ``seq`` is engine-wide and +1 per change."""

    seq: int
    op: Op
    collection: str
    key: Any
    doc: Document | None
    before: Document | None
    changes: Changes | None
    at: int
    token: Any = None

    @property
    def image(self) -> Document | None:
        """The newest known version: ``doc``, or ``before`` for a delete."""
        return self.doc if self.doc is not None else self.before


def decode(value: Any) -> Any:
    """Turn NX-27017's wrapped values (``$date``, object ids, binary) into real types."""
    if isinstance(value, dict):
        if len(value) == 1 and "$date" in value:
            return _decode_date(value["$date"])
        if value.get("__neosqlite_objectid__") is True and "id" in value:
            return ObjectId(value["id"])
        if value.get("__neosqlite_binary__") is True and "data" in value:
            return Binary(base64.b64decode(value["data"]), int(value.get("subtype", 0)))
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def _decode_date(raw: Any) -> Any:
    if isinstance(raw, int | float):
        return dt.datetime.fromtimestamp(raw / 1000, dt.UTC)
    if isinstance(raw, dict) and "$numberLong" in raw:
        return dt.datetime.fromtimestamp(int(raw["$numberLong"]) / 1000, dt.UTC)
    if isinstance(raw, str):
        parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return raw


def diff(before: Document, after: Document) -> Changes:
    """Dotted-path differences from ``before`` to ``after`` (arrays compare as whole values)."""
    changed: dict[str, Any] = {}
    removed: list[str] = []
    _diff_into(before, after, "", changed, removed)
    return Changes(changed, tuple(removed))


def _diff_into(before: Document, after: Document, prefix: str, changed: dict[str, Any],
               removed: list[str]) -> None:
    for name, new in after.items():
        path = prefix + name
        old = before.get(name, _MISSING)
        if old is _MISSING:
            changed[path] = new
        elif isinstance(old, dict) and isinstance(new, dict) and new:
            _diff_into(old, new, path + ".", changed, removed)
        elif not _same(old, new):
            changed[path] = new
    removed.extend(prefix + name for name in before if name not in after)


def _same(a: Any, b: Any) -> bool:
    # 1 == True in Python, but not in BSON: a change of type is a change.
    return type(a) is type(b) and a == b


def changes_from_description(description: Document, doc: Document | None) -> Changes:
    """``Changes`` from MongoDB's ``updateDescription``.

    A ``truncatedArrays`` entry says an array was cut to ``newSize`` without naming its new
    value: the array is sent whole from ``doc`` (the version of this change), replacing any
    element paths under it, so a subscriber applying the changes ends with the right array.
    """
    described = _described(description)
    changed, removed = dict(described.set), described.unset
    for entry in description.get("truncatedArrays") or ():
        path = entry["field"]
        for key in [k for k in changed if k.startswith(path + ".")]:
            del changed[key]
        changed[path] = get_path(doc, path)
    return Changes(changed, removed)


def _described(description: Document) -> Changes:
    """``updatedFields`` and ``removedFields`` as they are (no truncated arrays)."""
    return Changes(dict(description.get("updatedFields") or {}),
                   tuple(description.get("removedFields") or ()))


def apply_changes(doc: Document, changes: Changes,
                  components: Mapping[str, Sequence[str | int]] | None = None) -> Document:
    """``doc`` with ``changes`` applied (a copy): each ``set`` path written, each ``unset``
    removed. A numeric part indexes an array only where the document has an array there;
    ``components`` (MongoDB's ``disambiguatedPaths``) spell out a path's parts when a field
    name is itself numeric or contains a dot."""
    result = copy.deepcopy(doc)
    for path, value in changes.set.items():
        *parents, last = _parts(path, components)
        target: Any = result
        for part in parents:
            nxt = _child(target, part)
            if nxt is _MISSING or not isinstance(nxt, dict | list):
                nxt = {}
                _put(target, part, nxt)
            target = nxt
        _put(target, last, copy.deepcopy(value))
    for path in changes.unset:
        *parents, last = _parts(path, components)
        target = result
        for part in parents:
            target = _child(target, part)
            if target is _MISSING:
                break
        else:
            if isinstance(target, dict):
                target.pop(last, None)
    return result


def _parts(path: str, components: Mapping[str, Sequence[str | int]] | None) -> list[str]:
    if components and path in components:
        return [str(part) for part in components[path]]
    return path.split(".")


def _truncated(doc: Document, entries: Any) -> Document:
    """``doc`` with the arrays of ``truncatedArrays`` cut to their ``newSize``."""
    if not entries:
        return doc
    result = copy.deepcopy(doc)
    for entry in entries:
        *parents, last = str(entry["field"]).split(".")
        target: Any = result
        for part in parents:
            target = _child(target, part)
        value = _child(target, last)
        if isinstance(value, list):
            del value[int(entry.get("newSize", len(value))):]
    return result


def _child(container: Any, part: str) -> Any:
    if isinstance(container, dict):
        return container.get(part, _MISSING)
    if isinstance(container, list) and part.isdigit() and int(part) < len(container):
        return container[int(part)]
    return _MISSING


def _put(container: Any, part: str, value: Any) -> None:
    if isinstance(container, list) and part.isdigit():
        index = int(part)
        container.extend([None] * (index + 1 - len(container)))
        container[index] = value
    elif isinstance(container, dict):
        container[part] = value


def get_path(doc: Document | None, path: str) -> Any:
    """The value at a dotted ``path`` in ``doc``, or None when absent."""
    current: Any = doc
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part)
        else:
            return None
    return current


def path_values(doc: Document | None, path: str) -> list[Any]:
    """Every value a dotted ``path`` reaches in ``doc``, as MongoDB's queries see them: an
    array on the way is looked into element by element, and an array at the end counts as
    itself and as each of its elements (``items.product_id`` of an order is each line's
    product). Empty when the path reaches nothing."""
    current: list[Any] = [doc]
    for part in path.split("."):
        reached: list[Any] = []
        for value in current:
            if isinstance(value, dict):
                if part in value:
                    reached.append(value[part])
            elif isinstance(value, list):
                reached.extend(item[part] for item in value
                               if isinstance(item, dict) and part in item)
        current = reached
    found: list[Any] = []
    for value in current:
        found.append(value)
        if isinstance(value, list):
            found.extend(value)
    return found


def full_set(doc: Document) -> Changes:
    """Changes that rebuild ``doc`` from nothing (used when no previous version is known)."""
    return Changes({k: v for k, v in doc.items() if k != "_id"}, ())


def epoch_ms(value: Any) -> int | None:
    """Milliseconds since the epoch for a datetime (naive means UTC), else None."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    return None


def event_ms(raw: Document) -> int:
    """A raw change's time in epoch ms: ``wallTime``, else ``clusterTime``, else now."""
    at = epoch_ms(raw.get("wallTime"))
    if at is not None:
        return at
    cluster = raw.get("clusterTime")
    if isinstance(cluster, Timestamp):
        return int(cluster.time) * 1000
    at = epoch_ms(cluster)
    return at if at is not None else time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Normalized:
    """One raw change made engine-shaped, before it gets a ``seq``."""

    op: Op
    key: Any
    doc: Document | None
    before: Document | None
    changes: Changes | None
    at: int
    token: Any

    @property
    def empty(self) -> bool:
        """An update that changed nothing visible against the known previous version."""
        return self.op in ("update", "replace") and self.before is not None and not self.changes


def visible(doc: Document, hidden: frozenset[str]) -> Document:
    """``doc`` without the top-level ``hidden`` fields."""
    if not hidden or hidden.isdisjoint(doc):
        return doc
    return {k: v for k, v in doc.items() if k not in hidden}


def normalize(raw: Document, *, previous: Callable[[Any], Document | None],
              hidden: frozenset[str] = frozenset()) -> Normalized | None:
    """The change a raw stream document stands for, or None when it says nothing visible.

    ``previous(key)``: the last version of the document this stream delivered, or None
    when unknown; the diff is computed against it when the server sends no
    ``updateDescription`` (NX-27017 never does), unless the change carries its own
    ``fullDocumentBeforeChange`` (a MongoDB pre-image, a binlog row's before image).
    An update that changes only ``hidden`` fields, or nothing at all, comes back ``empty``.
    """
    op = raw.get("operationType")
    if op not in ("insert", "update", "replace", "delete"):
        return None
    key = decode((raw.get("documentKey") or {}).get("_id"))
    full = raw.get("fullDocument")
    doc = visible(decode(full), hidden) if full is not None else None
    pre_image = raw.get("fullDocumentBeforeChange")
    if op == "insert":
        before = None
    elif pre_image is not None:  # the source knows the version before this change
        before = visible(decode(pre_image), hidden)
    else:
        before = previous(key)
    changes = None
    if op == "delete":
        # NX-27017 sends the deleted document; MongoDB sends only the key.
        before = before if before is not None else doc
        doc = None
    else:
        description = raw.get("updateDescription")
        if op == "update" and description and before is not None:
            # The server said exactly what changed: this change's version is the previous
            # one with it applied. ``fullDocument`` may be a later version (updateLookup
            # reads the document when the event is sent: two quick updates can both carry
            # the second), or missing (a post-image that expired).
            description = decode(description)
            fields = _described(description).without(hidden)
            doc = apply_changes(_truncated(before, description.get("truncatedArrays") or ()),
                                fields, description.get("disambiguatedPaths"))
            changes = changes_from_description(description, doc).without(hidden)
            return Normalized(op, key, doc, before, changes, event_ms(raw), raw.get("_id"))
        if doc is None:
            return None  # deleted before the lookup; the delete event follows
        if op == "update" and description:
            changes = changes_from_description(decode(description), doc).without(hidden)
        elif op != "insert":
            changes = diff(before, doc) if before is not None else full_set(doc)
    return Normalized(op, key, doc, before, changes, event_ms(raw), raw.get("_id"))

