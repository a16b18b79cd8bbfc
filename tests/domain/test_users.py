from __future__ import annotations

import pytest

from backend.domain.errors import Throttled
from backend.domain.users import LoginThrottle, user_from_doc


def test_users_throttle_blocks_a_pair_after_the_limit_and_forgets_after_the_window() -> None:
    now = [0.0]
    throttle = LoginThrottle(limit=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.check("a@x", "1.1.1.1") == 0
        throttle.fail("a@x", "1.1.1.1")
    with pytest.raises(Throttled) as caught:
        throttle.check("a@x", "1.1.1.1")
    assert caught.value.retry_after == 60
    assert throttle.check("b@x", "1.1.1.1") == 0  # another account from there: fine
    now[0] = 61.0
    assert throttle.check("a@x", "1.1.1.1") == 0


def test_users_throttle_backs_off_a_sprayed_account_instead_of_locking_it() -> None:
    throttle = LoginThrottle(limit=3, address_limit=100, clock=lambda: 0.0)
    for n in range(6):  # six addresses, one failure each
        throttle.fail("owner@x", f"10.0.0.{n}")
    assert throttle.check("owner@x", "192.0.2.1") == 2.0  # waits, is not refused
    throttle = LoginThrottle(limit=10, address_limit=3, clock=lambda: 0.0)
    for n in range(3):
        throttle.fail(f"u{n}@x", "10.0.0.9")
    with pytest.raises(Throttled):  # one address spraying many accounts
        throttle.check("someone@x", "10.0.0.9")


def test_users_throttle_evicts_the_oldest_keys_not_everything() -> None:
    throttle = LoginThrottle(limit=1, max_keys=6, clock=lambda: 0.0)
    throttle.fail("a@x", "1.1.1.1")  # 3 keys
    throttle.fail("b@x", "2.2.2.2")  # 6 keys
    throttle.fail("c@x", "3.3.3.3")  # 9 keys: a's go
    throttle.check("a@x", "1.1.1.1")
    with pytest.raises(Throttled):
        throttle.check("c@x", "3.3.3.3")


def test_users_a_user_never_carries_the_password_hash() -> None:
    user = user_from_doc({"_id": "u1", "email": "a@example.com", "password_hash": "x"})
    assert user.role == "customer" and user.name == ""
    assert "password_hash" not in user.public()
