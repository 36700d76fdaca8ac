#!/usr/bin/env bash
# Installs the loraq Python package (`pip install .`) into the virtual environment given as $1,
# without build isolation: pyproject.toml's build requirements (scikit-build-core, nanobind) come
# from PyPI into that environment, and the build folder build/python-wheel is kept, so that a
# second run recompiles only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$1"
mkdir -p build
"$venv/bin/python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
  > build/python-build-requirements.txt
pip_quiet=(-q --disable-pip-version-check)
"$venv/bin/pip" install "${pip_quiet[@]}" -r build/python-build-requirements.txt
"$venv/bin/pip" install "${pip_quiet[@]}" --no-build-isolation -C build-dir=build/python-wheel .
