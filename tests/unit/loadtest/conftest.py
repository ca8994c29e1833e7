"""Load-test fixtures: the serving tests' exported tiny MMoE (``exported_repo``), shared rather than rebuilt here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SERVING_CONFTEST = Path(__file__).resolve().parents[1] / "serving" / "conftest.py"
_spec = importlib.util.spec_from_file_location("mtlrec_tests_serving_conftest", _SERVING_CONFTEST)
assert _spec is not None and _spec.loader is not None
_serving = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _serving  # dataclasses in it look their module up
_spec.loader.exec_module(_serving)

exported_repo = _serving.exported_repo
