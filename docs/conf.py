"""Sphinx configuration of the ntkit documentation site (built by ./docs.sh, warnings as errors)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import ntkit

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("NTKIT_PROGRESS", "0")  # no progress bars in the gallery's captured output

project = "ntkit"
author = "ntkit developers"
copyright = "ntkit developers"
release = ntkit.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
    "ntkit_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "_generated", "examples", "**.ipynb_checkpoints", "auto_examples/*.ipynb"]

# -- every cross-reference must resolve (warnings are errors) -------------------------------------
nitpicky = True
# names of other projects (no intersphinx: the build must not need the network) and numpydoc's
# plain-language types
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|scipy|sklearn|dask|distributed|zarr|matplotlib)(\..*)?"),
    (r"py:.*", r"(argparse|pathlib|os|collections)(\..*)?"),
    (r"py:.*", r"(typing|abc|enum|dataclasses|ctypes|threading|concurrent)(\..*)?"),
    (r"py:class", r"(Tensor|Module|Parameter|Generator|ndarray|array-like|array_like|optional|callable|default.*)"),
    (r"py:class", r"(int|float|str|bool|bytes|tuple|list|dict|set|None|object|type|Any|Callable|Sequence|Iterable)"),
    (r"py:class", r"(Iterator|Mapping|NamedTuple|PathLike|TextIO|Path|Literal|Self)"),
    (r"py:.*", r"(ValueError|TypeError|RuntimeError|KeyError|UserWarning|Warning|ImportError|FileNotFoundError)"),
    (r"py:.*", r"(OSError|NotImplementedError|KeyboardInterrupt|ArithmeticError|Exception)"),
]

# -- API reference: autosummary pages from the docstrings, numpydoc sections ---------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": False}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types and shapes
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = {"GL08"}  # every documented object has a docstring
# members that torch/dataclasses/NamedTuple give every object; not ntkit's API
numpydoc_validation_exclude = {
    r"\.forward$", r"\.extra_repr$", r"\.__init__$", r"\.count$", r"\.index$", r"\.with_traceback$",
    r"\.add_note$",
}

# -- gallery: examples run at build time, their figures become the pages' images -------------------
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "reset_modules": ("matplotlib", "ntkit_docs.reset_torch"),
    "reset_modules_order": "both",
    "show_memory": False,
    "line_numbers": False,
    "min_reported_time": 1,
    "within_subsection_order": "FileNameSortKey",
    "capture_repr": ("_repr_html_", "__repr__"),
    "ignore_repr_types": r"matplotlib\..*",
}

# -- Markdown pages (the generated accuracy and benchmark tables) ---------------------------------
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

# -- math: MathJax from the site itself when ./docs.sh could fetch it (npm), else from its CDN ------
# (a site read offline -- a local build, the CI's browser test -- then still renders its equations)
_MATHJAX = DOCS / "_build" / "mathjax" / "node_modules" / "mathjax" / "es5"
_MATHJAX_STATIC = DOCS / "_build" / "mathjax-static"
if (_MATHJAX / "tex-svg.js").is_file():
    import shutil

    for part in ["tex-svg.js", "input", "ui", "a11y"]:
        src, dst = _MATHJAX / part, _MATHJAX_STATIC / "mathjax" / part
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    mathjax_path = "mathjax/tex-svg.js"

# -- HTML ------------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"ntkit {release}"
html_static_path = ["_static"] + ([str(_MATHJAX_STATIC)] if _MATHJAX_STATIC.is_dir() else [])
html_logo = "_static/ntkit-logo.svg"
html_favicon = "_static/ntkit-logo.svg"
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "header_links_before_dropdown": 7,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
    "secondary_sidebar_items": ["page-toc"],
}
html_sidebars = {"index": [], "getting_started": [], "mathematics": [], "changelog": []}
