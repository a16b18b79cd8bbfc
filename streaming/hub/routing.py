"""The routing index: one collection's groups, found for a change by the values of an
equality-constrained field (``user_id`` of a customer's orders) instead of asking each."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from streaming.events import ChangeEvent, path_values
from streaming.filters import hashable, index_keys
from streaming.hub.members import Group


class Routes:
    """One collection's groups, indexed by an equality-constrained field."""

    __slots__ = ("by_field", "unindexed")

    def __init__(self) -> None:
        self.unindexed: dict[Group, None] = {}
        self.by_field: dict[str, dict[Any, dict[Group, None]]] = {}

    def add(self, group: Group) -> None:
        field, values = index_key(group)
        if field is None:
            self.unindexed[group] = None
            return
        index = self.by_field.setdefault(field, {})
        for value in values:
            index.setdefault(value, {})[group] = None

    def remove(self, group: Group) -> None:
        field, values = index_key(group)
        if field is None:
            self.unindexed.pop(group, None)
            return
        index = self.by_field.get(field, {})
        for value in values:
            bucket = index.get(value)
            if bucket is not None:
                bucket.pop(group, None)
                if not bucket:
                    del index[value]
        if not index:
            self.by_field.pop(field, None)

    def groups(self) -> list[Group]:
        found = list(self.unindexed)
        for index in self.by_field.values():
            for bucket in index.values():
                found.extend(bucket)
        return list(dict.fromkeys(found))

    def candidates(self, event: ChangeEvent) -> Iterator[Group]:
        yield from self.unindexed
        if not self.by_field:
            return
        for field, index in self.by_field.items():
            keys = index_keys((*path_values(event.doc, field), *path_values(event.before, field)))
            buckets = [bucket for key in dict.fromkeys(keys) if (bucket := index.get(key))]
            if len(buckets) == 1:
                yield from buckets[0]
            elif buckets:
                yield from dict.fromkeys(group for bucket in buckets for group in bucket)


def index_key(group: Group) -> tuple[str | None, frozenset[Any]]:
    for field, value in group.restriction_fields.items():
        if hashable(value):
            return field, frozenset([value])
    if group.where is not None:
        for field, values in group.where.constraints.items():
            return field, values
    return None, frozenset()
