"""The usage example in streaming/README.md runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(60)
def test_streaming_readme_example_runs_against_the_embedded_server(nx_uri: str, db_name: str) -> None:
    text = (ROOT / "streaming" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    env = {**os.environ, "MONGODB_URI": nx_uri, "EXAMPLE_DB": db_name}
    result = subprocess.run([sys.executable, "-c", code.group(1)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "enter ORD-EXAMPLE 25000"
