from __future__ import annotations

import pytest

from backend.domain import access
from backend.domain.errors import Forbidden, NotFound, Unauthenticated
from backend.domain.users import User

ADMIN = User("user-admin", "admin@example.com", "Admin", "admin")
ALICE = User("user-customer01", "customer01@example.com", "Alice", "customer")


def test_access_subscription_rules_per_role_and_collection() -> None:
    assert access.subscription_rule(None, "products") == (True, None)
    for collection in ("orders", "notifications", "users", "presence"):
        assert access.subscription_rule(None, collection)[0] is False
    own = {"user_id": "user-customer01"}
    assert access.subscription_rule(ALICE, "orders") == (True, own)
    assert access.subscription_rule(ALICE, "notifications") == (True, own)
    assert access.subscription_rule(ALICE, "users") == (False, None)
    assert access.subscription_rule(ALICE, "presence") == (False, None)  # staff only
    assert access.subscription_rule(ALICE, "products") == (True, None)
    for collection in ("orders", "notifications", "users", "products", "presence"):
        assert access.subscription_rule(ADMIN, collection) == (True, None)


def test_access_another_customers_order_is_not_found_not_forbidden() -> None:
    order = {"_id": "ORD-1", "user_id": "user-customer02"}
    with pytest.raises(NotFound, match="no order 'ORD-1'"):
        access.check_order_visible(ALICE, order, "ORD-1")
    with pytest.raises(NotFound):
        access.check_order_visible(ALICE, None, "ORD-1")
    assert access.check_order_visible(ADMIN, order, "ORD-1") is order


def test_access_customers_only_cancel_and_order_for_themselves() -> None:
    access.check_status_change(ALICE, "cancelled")
    with pytest.raises(Forbidden):
        access.check_status_change(ALICE, "shipped")
    access.check_status_change(ADMIN, "shipped")
    access.check_order_owner(ALICE, None)
    access.check_order_owner(ALICE, ALICE.id)
    with pytest.raises(Forbidden):
        access.check_order_owner(ALICE, "user-customer02")
    access.check_order_owner(ADMIN, "user-customer02")


def test_access_require_user_and_admin() -> None:
    with pytest.raises(Unauthenticated):
        access.require_user(None)
    with pytest.raises(Forbidden, match="admins only"):
        access.require_admin(ALICE)
    assert access.require_admin(ADMIN) is ADMIN
