from __future__ import annotations

from backend.auth import User
from backend.ws import restriction_for

ADMIN = User("user-admin", "admin@example.com", "Admin", "admin")
ALICE = User("user-customer01", "customer01@example.com", "Alice", "customer")


def test_restriction_rules_per_role_and_collection() -> None:
    assert restriction_for(None, "products") == (True, None)
    for collection in ("orders", "notifications", "users"):
        assert restriction_for(None, collection)[0] is False
    assert restriction_for(ALICE, "orders") == (True, {"user_id": "user-customer01"})
    assert restriction_for(ALICE, "notifications") == (True, {"user_id": "user-customer01"})
    assert restriction_for(ALICE, "users") == (False, None)
    assert restriction_for(ALICE, "products") == (True, None)
    for collection in ("orders", "notifications", "users", "products"):
        assert restriction_for(ADMIN, collection) == (True, None)
