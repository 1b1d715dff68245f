"""MkDocs hook: render the pages' LaTeX to MathML at build time.

``pymdownx.arithmatex`` (``generic: true``) leaves every equation as
``<div class="arithmatex">\\[ ... \\]</div>`` or ``<span class="arithmatex">\\( ... \\)</span>``,
waiting for a JavaScript renderer. Instead of shipping one (or loading it from a CDN when the page
is read), this hook converts each equation to MathML with the pure-Python ``latex2mathml``
package while the site is built; browsers render MathML natively (Chromium since 109, Firefox,
Safari), so the built site shows its equations offline with no script at all.

An equation ``latex2mathml`` cannot convert fails the build (with the page and the LaTeX), so a
page never ships raw LaTeX silently.
"""
from __future__ import annotations

import html
import re

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError

_MATH = re.compile(r'<(div|span) class="arithmatex">(.*?)</\1>', re.S)
_DELIMS = {"\\[": "\\]", "\\(": "\\)", "$$": "$$", "$": "$"}


def _strip_delimiters(tex: str) -> str:
    """Remove the ``\\[ \\]`` / ``\\( \\)`` (or dollar) delimiters around one equation."""
    tex = tex.strip()
    for left, right in _DELIMS.items():
        if tex.startswith(left) and tex.endswith(right) and len(tex) >= len(left) + len(right):
            return tex[len(left):len(tex) - len(right)].strip()
    return tex


def to_mathml(match: re.Match, where: str = "") -> str:
    """Replace one arithmatex element by the same element holding MathML.

    Args:
        match: a match of ``_MATH``: the tag (``div`` for display math, ``span`` for inline) and
            the HTML-escaped LaTeX with its delimiters.
        where: the page, for the error message.

    Returns:
        The element with its LaTeX replaced by a ``<math>`` element.

    Raises:
        PluginError: when ``latex2mathml`` cannot convert the equation.
    """
    tag, body = match.group(1), match.group(2)
    tex = _strip_delimiters(html.unescape(body))
    try:
        mathml = convert(tex, display="block" if tag == "div" else "inline")
    except Exception as err:  # latex2mathml raises several exception types
        raise PluginError(f"{where}: cannot render the equation {tex!r} as MathML: {err}") from err
    return f'<{tag} class="arithmatex">{mathml}</{tag}>'


def on_page_content(html_text: str, page, config, files) -> str:
    """MkDocs event: render every equation of a page's HTML as MathML.

    Args:
        html_text: the page's HTML, as Markdown (and mkdocstrings) produced it.
        page: the page being built.
        config: the MkDocs configuration (unused).
        files: the site's files (unused).

    Returns:
        The HTML with every arithmatex equation rendered as MathML.
    """
    where = getattr(getattr(page, "file", None), "src_path", "?")
    return _MATH.sub(lambda m: to_mathml(m, where), html_text)
