from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.infra.database import DatabaseError, open_database
from backend.infra.settings import Settings
from tests.support.fake_mongod import FakeStandalone

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def standalone() -> Iterator[FakeStandalone]:
    server = FakeStandalone()
    yield server
    server.close()


def settings_for(uri: str, tmp_path: Path, db_name: str = "changecast") -> Settings:
    return Settings(mongodb_uri=uri, db_name=db_name, data_dir=tmp_path, demo=False,
                    admin_password="admin-pass-123", secret_key="k" * 40)


async def test_open_database_refuses_a_standalone(standalone: FakeStandalone,
                                                  tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="replica set") as info:
        async with open_database(settings_for(standalone.uri, tmp_path)):
            pass
    assert "docker compose up" in str(info.value)


async def test_open_database_unreachable_names_the_host_quickly(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseError, match=r"127\.0\.0\.1:1: is the server running"):
        async with open_database(settings_for("mongodb://127.0.0.1:1/?directConnection=true",
                                              tmp_path)):
            pass
    assert time.monotonic() - started < 10


@pytest.mark.embedded_only(reason="it checks that the server is detected as NX-27017")
async def test_open_database_detects_embedded_and_creates_indexes(nx_uri: str, tmp_path: Path,
                                                                  db_name: str) -> None:
    async with open_database(settings_for(nx_uri, tmp_path, db_name)) as database:
        assert database.kind == "embedded"
        indexes = await database.db.users.index_information()
        assert any(spec.get("unique") and spec["key"][0][0] == "email"
                   for spec in indexes.values())
        order_fields = [[field for field, _ in spec["key"]]
                        for spec in (await database.db.orders.index_information()).values()]
        assert ["user_id", "created_at"] in order_fields
        first_instance = database.instance_id
    async with open_database(settings_for(nx_uri, tmp_path, db_name)) as database:
        assert database.instance_id == first_instance
