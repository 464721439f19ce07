"""The README's walk-through runs as written, with curl, against a live server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memories.models import Memory

ROOT = Path(__file__).resolve().parent.parent


def _walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- walkthrough:start -->\s*```bash\n(.*?)```\s*<!-- walkthrough:end -->", readme, re.S)
    assert block, "README.md lost its walk-through markers"
    return block.group(1)


@pytest.mark.django_db(transaction=True)
def test_readme_walkthrough_runs_as_written(live_server: Any, subprocess_env: dict[str, str]) -> None:
    env = {**subprocess_env, "URL": live_server.url, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _walkthrough()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in re.findall(r"^\{.*\}$", result.stdout.replace("}{", "}\n{"), re.M)]
    search = next(answer for answer in answers if "query" in answer)
    assert search["results"][0]["content"] == "I always book a window seat when I fly"
    assert {hit["user_id"] for hit in search["results"]} == {"alice"}
    assert Memory.objects.filter(user_id="alice").count() == 3


def test_readme_configuration_table_names_every_setting() -> None:
    source = (ROOT / "memoryproject" / "settings.py").read_text()
    names = set(re.findall(r'env_(?:str|bool|int|float|list|choice|rate|header)\("([A-Z_]+)"', source))
    readme = (ROOT / "README.md").read_text()
    assert names
    assert sorted(name for name in names if f"`{name}`" not in readme) == []
