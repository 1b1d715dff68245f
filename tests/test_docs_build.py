"""The documentation site builds with ``mkdocs build --strict`` (no network needed)."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    """The site, built once for this file with ``mkdocs build --strict``."""
    tmp_path = tmp_path_factory.mktemp("docs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path


def test_mkdocs_build_strict(built_site):
    tmp_path = built_site
    pages = ["index.html", "models/rhvae/index.html", "api/index.html", "migration/index.html"]
    for page in pages:
        path = tmp_path / "site" / page
        assert path.exists() and path.stat().st_size > 5000, page
    # the API reference was generated from the docstrings
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "decoder_loglikelihood" in api and "marginal_loglikelihood" in api


# --- math: equations are MathML rendered at build time (docs/hooks/math.py), never raw LaTeX ---

_CODE = re.compile(r"<(pre|code|script|style)\b.*?</\1>", re.S)
_RAW_MATH = re.compile(r"\\\[|\\\]|\\\(|\\\)|\$\$")


def _text_outside_code(path):
    return _CODE.sub("", open(path, encoding="utf-8").read())


def test_no_raw_latex_on_any_page(built_site):
    pages = glob.glob(str(built_site / "site" / "**" / "*.html"), recursive=True)
    assert len(pages) > 10
    raw = {}
    for page in pages:
        hits = _RAW_MATH.findall(_text_outside_code(page))
        if hits:
            raw[os.path.relpath(page, built_site)] = hits[:3]
    assert not raw, f"raw LaTeX delimiters left on the built pages: {raw}"


def test_display_equations_become_mathml(built_site):
    # every page whose Markdown has display math ($$ ... $$) shows it as block MathML
    sources = glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
    with_math = [s for s in sources if "$$" in _CODE.sub("", open(s, encoding="utf-8").read())]
    assert len(with_math) >= 5
    for src in with_math:
        rel = os.path.relpath(src, os.path.join(ROOT, "docs"))[:-3]
        page = "index.html" if rel == "index" else os.path.join(rel, "index.html")
        html = open(built_site / "site" / page, encoding="utf-8").read()
        n_display = open(src, encoding="utf-8").read().count("$$") // 2
        assert html.count('<math xmlns="http://www.w3.org/1998/Math/MathML" display="block"') >= n_display, rel
    # structural MathML, not LaTeX text in a <math> tag: the VAE loss has a fraction and a sum
    vae = open(built_site / "site" / "models" / "vae" / "index.html", encoding="utf-8").read()
    assert "<mfrac" in vae and "<mo>&#x02211;</mo>" in vae


_PROBE = """<script>
window.addEventListener("load", () => {
  const out = [...document.querySelectorAll("math")].map(m => {
    const b = m.getBoundingClientRect();
    return [m instanceof MathMLElement, b.width, b.height,
            m.getAttribute("display") || "inline", m.querySelector("mfrac") !== null];
  });
  const p = document.createElement("pre"); p.id = "probe"; p.textContent = JSON.stringify(out);
  document.body.appendChild(p);
});
</script>"""


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless check needs Debian's chromium (apt-get install chromium)")
def test_chromium_lays_out_the_mathml(built_site, tmp_path):
    """Headless Chromium lays the equations out as MathML: a display fraction stacks (is taller
    than an inline equation without one), which text merely wrapped in <math> would not."""
    page = built_site / "site" / "models" / "iwae" / "index.html"
    probe = page.parent / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    proc = subprocess.run(["chromium", *flags, "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    probe.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stderr[-2000:]
    maths = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(maths) >= 2 and all(is_mathml and w > 0 and h > 0 for is_mathml, w, h, _, _ in maths)
    frac = [h for _, _, h, disp, has_frac in maths if disp == "block" and has_frac]
    plain = [h for _, _, h, disp, has_frac in maths if disp == "inline" and not has_frac]
    assert frac and plain and min(frac) > 1.5 * max(plain), maths
