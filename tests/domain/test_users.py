from __future__ import annotations

import pytest

from backend.domain.errors import Throttled
from backend.domain.users import LoginThrottle, user_from_doc


def test_users_throttle_blocks_after_the_limit_and_forgets_after_the_window() -> None:
    now = [0.0]
    throttle = LoginThrottle(limit=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        throttle.check("email:a")
        throttle.fail("email:a")
    with pytest.raises(Throttled) as caught:
        throttle.check("email:a", "ip:1")
    assert caught.value.retry_after == 60
    throttle.check("email:b")  # another account is not affected
    now[0] = 61.0
    throttle.check("email:a")


def test_users_a_user_never_carries_the_password_hash() -> None:
    user = user_from_doc({"_id": "u1", "email": "a@example.com", "password_hash": "x"})
    assert user.role == "customer" and user.name == ""
    assert "password_hash" not in user.public()
