"""A change rendered once per kind of page, however many pages show it."""

from __future__ import annotations

from collections import OrderedDict

from backend.web.pages.views import View
from streaming import Delivery


class RenderCache:
    """What a change renders to on one kind of page does not depend on who is watching
    (restrictions decide *whether* a page gets it, not *how* it looks), so a thousand open
    portals showing one stock change cost one template render, not a thousand."""

    def __init__(self, maxsize: int = 2048) -> None:
        self.maxsize = maxsize
        self._rendered: OrderedDict[tuple[str, str | None, int], list[str]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def render(self, view: View, delivery: Delivery) -> list[str]:
        if delivery.event is None:
            return view.render(delivery)
        key = (view.name, delivery.op, delivery.event.seq)
        parts = self._rendered.get(key)
        if parts is not None:
            self._rendered.move_to_end(key)
            self.hits += 1
            return parts
        self.misses += 1
        parts = view.render(delivery)
        self._rendered[key] = parts
        if len(self._rendered) > self.maxsize:
            self._rendered.popitem(last=False)
        return parts
