"""Fixtures of the real-Triton tier: the install located in ``.venv-triton``, or a skip saying how to get it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tritonserver import DEFAULT_VENV, TritonInstall, locate_triton

# MTLREC_TRITON_VENV: another environment made like .venv-triton. MTLREC_REQUIRE_TRITON=1 (CI, where the wheel
# installs): fail instead of skipping when the server is missing, so the tier cannot silently stop running.
VENV_VARIABLE = "MTLREC_TRITON_VENV"
REQUIRE_VARIABLE = "MTLREC_REQUIRE_TRITON"

# The shims import triton_python_backend_utils, which exists only inside Triton: keep --doctest-modules off them.
collect_ignore = ["triton_backends"]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``triton`` marker here too, so this tier runs under --strict-markers on its own."""
    config.addinivalue_line("markers", "triton: needs the real Triton server of .venv-triton (skips without it)")


@pytest.fixture(scope="session")
def triton_install() -> TritonInstall:
    """The ``nvidia-pytriton`` tritonserver of ``.venv-triton``; skips (with the reason) where it is not installed.

    ``scripts/setup_triton.sh`` creates that environment; it fails, and these tests skip, only where the
    ``nvidia-pytriton`` wheel cannot be installed (no PyPI access, or not Linux x86_64/aarch64 with glibc >= 2.35).
    """
    found = locate_triton(Path(os.environ.get(VENV_VARIABLE) or DEFAULT_VENV))
    if isinstance(found, str):
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"{REQUIRE_VARIABLE}=1 but the real Triton tier is unavailable: {found}", pytrace=False)
        pytest.skip(f"real Triton tier unavailable: {found}")
    return found
