"""Who may see or change what: one place for the rules the REST API, the sockets and the
pages all apply, on the server, whatever the client asks for."""

from __future__ import annotations

from backend.domain.errors import Forbidden, NotFound, Unauthenticated
from backend.domain.users import User
from streaming import Document

# Customers see only their own documents of these collections.
OWNED = frozenset({"orders", "notifications"})
ADMIN_ONLY = frozenset({"users", "presence"})  # who has the console open is the staff's business
Restriction = dict[str, str]


def require_user(user: User | None) -> User:
    """The user, or Unauthenticated."""
    if user is None:
        raise Unauthenticated("sign in first")
    return user


def require_admin(user: User | None) -> User:
    """The user if an admin; Unauthenticated or Forbidden otherwise."""
    user = require_user(user)
    if not user.is_admin:
        raise Forbidden("admins only")
    return user


def subscription_rule(user: User | None, collection: str) -> tuple[bool, Restriction | None]:
    """(allowed, restriction) for ``user`` subscribing to ``collection``: anonymous clients
    see products only, customers never see users nor presence and only their own orders
    and notifications, admins see everything."""
    if user is None:
        return collection == "products", None
    if user.is_admin:
        return True, None
    if collection in ADMIN_ONLY:
        return False, None
    if collection in OWNED:
        return True, {"user_id": user.id}
    return True, None


def check_order_visible(user: User, order: Document | None, order_id: str) -> Document:
    """The order if ``user`` may see it; NotFound otherwise (never confirm another's order
    exists)."""
    if order is None or (not user.is_admin and order.get("user_id") != user.id):
        raise NotFound(f"no order {order_id!r}")
    return order


def check_status_change(user: User, target: str) -> None:
    """An admin moves any order; a customer may only cancel (their own)."""
    if not user.is_admin and target != "cancelled":
        raise Forbidden("customers may only cancel their orders")


def check_order_owner(user: User, owner: str | None) -> None:
    """Customers order for themselves; an admin may name another user."""
    if owner is not None and owner != user.id and not user.is_admin:
        raise Forbidden("customers order for themselves only")
