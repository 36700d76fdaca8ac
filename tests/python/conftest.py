"""Shared fixtures: the loraq command built by CMake, run as a user would run it."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _find_binary(env_name, default):
    path = os.environ.get(env_name) or str(ROOT / default)
    return path if os.path.exists(path) else None


@pytest.fixture(scope="session")
def loraq_bin():
    path = _find_binary("LORAQ_BIN", "build/tools/cli/loraq")
    if path is None:
        pytest.fail("the loraq command is not built: run scripts/test.sh (or set LORAQ_BIN)")
    return path


@pytest.fixture
def run_loraq(loraq_bin):
    def run(*args, check=True):
        result = subprocess.run([loraq_bin, *map(str, args)], capture_output=True, text=True, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"loraq {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
        return result

    return run
