"""Imports flow one way: the modules below the engine (reports, routing, export, loading weights, the
plugin test kit) never import ``kdsr.engine``, so the engine can use them without a cycle."""

import subprocess
import sys

BELOW_ENGINE = ("kdsr.report", "kdsr.testing", "kdsr.inference", "kdsr.tiling", "kdsr.export", "kdsr.plain", "kdsr.weights")


def test_modules_below_the_engine_do_not_import_it() -> None:
    code = f"import sys, {', '.join(BELOW_ENGINE)}; print(sorted(m for m in sys.modules if m.startswith('kdsr.engine')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{', '.join(BELOW_ENGINE)} pull in {out.strip()}"
