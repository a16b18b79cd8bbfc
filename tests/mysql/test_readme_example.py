"""streaming/README.md's MySQL example runs as written against a private MariaDB and
prints what the README says it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.support.mariadb import MariaDB


@pytest.mark.timeout(60)
def test_streaming_readme_mysql_example_runs_as_written(mariadb_server: MariaDB, schema: str) -> None:
    text = (ROOT / "streaming" / "README.md").read_text()
    section = text[text.index("## MySQL / MariaDB"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    printed = re.search(r"It prints:\n\n```text\n(.*?)```", section, re.S)
    assert code is not None and printed is not None
    assert "MySQLSource" in code.group(1)
    env = {**os.environ, "MYSQL_PORT": str(mariadb_server.port), "EXAMPLE_DB": schema}
    result = subprocess.run([sys.executable, "-c", code.group(1)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    assert [line.rstrip() for line in result.stdout.splitlines()] == \
        printed.group(1).strip().splitlines()
