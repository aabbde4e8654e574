"""Sphinx configuration of the documentation site: ``make docs`` builds it into ``site/``.

The guides are Markdown (MyST), the API reference comes from the docstrings (autodoc and napoleon read their
reStructuredText roles, ``.. math::`` blocks and Google sections as written), and formulas are drawn by KaTeX from
files served with the site (``_static/katex``: the stylesheet and fonts; sphinxcontrib-katex ships the script), so
the built pages need no network. The build is strict: ``-W -n`` turns every warning and every cross-reference that
resolves nowhere into an error.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

project = "lightning-smart"
author = "lightning-smart developers"
copyright = "lightning-smart developers, Apache-2.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxcontrib.katex",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "examples"]
root_doc = "index"

# Markdown: $…$ and $$…$$ formulas, ::: fences for directives, anchors for headings down to ###.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# The API reference: members in the order of the source, the type hints in the signatures, no docstrings inherited
# from Lightning's or torch's classes (a method without its own docstring shows none).
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Every reference into this package must resolve, except to private names (a class's private base shown by
# show-inheritance); references to other libraries are left as text (no intersphinx inventories offline).
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"^(?!lightning_smart\b).*"), (r"py:.*", r"^lightning_smart\.(.*\.)?_\w+$")]

html_theme = "furo"
html_title = "lightning-smart"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
katex_css_path = "katex/katex.min.css"
katex_prerender = False
pygments_style = "friendly"
pygments_dark_style = "monokai"
