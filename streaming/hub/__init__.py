"""Fan-out: live queries over change events, shared per group, bounded per member.

A ``Subscriber`` is one consumer (say, a WebSocket connection); it holds any
number of ``Subscription``s (collection + compiled filter + mandatory
restriction). Subscriptions that would receive identical output (same
collection, same normalized ``where``, same restriction) are members of one
``Group``: ``Hub.publish`` routes a change through an index of equality
constraints to groups, and decides **once per group** what the change means
(enter, update with its diff, leave, or nothing).

Two kinds of member:

- a *queue* subscriber (the default: ``hub.subscriber()``) gets the group's
  decision appended to its own bounded queue at once, and drains it with
  ``get_batch()``; a full queue coalesces updates or cuts the subscriber off
  with ``resync``.
- a *push* subscriber (``hub.subscriber(outlet=...)``): the group's decisions
  accumulate in a ``Batch`` that is handed, as the same object, to every
  member's ``Outlet`` in a fan-out pass run from the event loop soon after.
  Whatever the outlet derives from a batch (a JSON encoding, rendered HTML,
  frame bytes) it may keep in ``batch.encoded``, so that a thousand members
  cost one encoding and a thousand writes. While a pass is being written
  (bounded work per loop turn, so writes and reads of other clients keep
  their turn), new changes accumulate and go out together in the next pass.
  The outlet owns its member's backlog and calls ``cut_off`` when it is full.

A subscription that is told to ``resync`` is closed on the server: the client
reloads its snapshot and subscribes again with ``resume_from`` set to the
snapshot's ``seq``, so there is never a gap nor a duplicate.
"""

from streaming.hub.deliveries import Batch, Delivery, merge_changes, route
from streaming.hub.fanout import FANOUT_CHUNK, Hub
from streaming.hub.members import DeliverEach, Group, HubSide, Outlet, Subscriber, Subscription, deliver_each

__all__ = ["FANOUT_CHUNK", "Batch", "DeliverEach", "Delivery", "Group", "Hub", "HubSide",
           "Outlet", "Subscriber", "Subscription", "deliver_each", "merge_changes", "route"]
