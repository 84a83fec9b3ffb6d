"""`monitor run` caps glibc's malloc arenas (RSS, see `limit_malloc_arenas`), unless the
operator chose a number with MALLOC_ARENA_MAX."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CALL = "from monitor.scheduler import limit_malloc_arenas; print(limit_malloc_arenas())"


def run(env: dict[str, str]) -> str:
    # A process of its own: the cap is process-wide and set once.
    return subprocess.run([sys.executable, "-c", CALL], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_cap_is_set_on_glibc_unless_the_environment_sets_one() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert run(env) == "True"
    assert run({**env, "MALLOC_ARENA_MAX": "4"}) == "False"
