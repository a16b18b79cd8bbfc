"""The binlog source's tests run against a private ``mariadbd`` (tests/support/mariadb.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import free_port
from tests.support import mariadb
from tests.support.mariadb import MariaDB


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """One server for the session's tests that neither kill nor rebuild it."""
    if not mariadb.available():
        pytest.fail("mariadbd is not installed: `make test` installs Debian's mariadb-server")
    server = MariaDB(tmp_path_factory.mktemp("mariadb"), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def schema(mariadb_server: MariaDB) -> Iterator[str]:
    """A fresh database (schema) per test."""
    name = "t" + uuid.uuid4().hex[:12]
    mariadb_server.execute(None, f"CREATE DATABASE {name}")
    yield name
    mariadb_server.execute(None, f"DROP DATABASE IF EXISTS {name}")
