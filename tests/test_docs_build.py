"""The documentation site builds with ``mkdocs build --strict`` (no network needed)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pages = ["index.html", "models/rhvae/index.html", "api/index.html", "migration/index.html"]
    for page in pages:
        path = tmp_path / "site" / page
        assert path.exists() and path.stat().st_size > 5000, page
    # the API reference was generated from the docstrings
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "decoder_loglikelihood" in api and "marginal_loglikelihood" in api
