"""Sphinx configuration of the lowrank_pool documentation site (``make docs``).

Sphinx, not MkDocs: numpydoc reads the package's numpy-style docstrings as they are,
sphinx-gallery executes the examples at build time (figures are produced, not pasted), and
MyST lets the Markdown pages (conventions, benchmarks, the demo report) stay Markdown. Math is
rendered by a MathJax copy shipped with the site (sphinx-mathjax-offline): opening a page
makes no request to any outside host. The build runs with -W: any warning fails it.
"""

from __future__ import annotations

import os
import warnings

import lowrank_pool

project = "lowrank_pool"
author = "the lowrank_pool developers"
copyright = "2026, the lowrank_pool developers"
release = version = lowrank_pool.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # sets mathjax_path to the bundled MathJax 3 and copies it into _static
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "gallery", "tutorial", "sg_execution_times.rst", "check_site.py"]
root_doc = "index"

# --- MyST: $...$ / $$...$$ math in the Markdown pages
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# --- numpydoc / autodoc
numpydoc_show_class_members = False  # members are listed explicitly in the API pages
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
autodoc_typehints = "none"  # the numpydoc Parameters sections carry the types, with shapes
autodoc_member_order = "bysource"

# --- sphinx-gallery: examples run at build time, their figures are the pages' figures
os.environ.setdefault("MPLBACKEND", "agg")
warnings.filterwarnings("ignore", message="Matplotlib is currently using agg")
sphinx_gallery_conf = {
    "examples_dirs": ["tutorial", "gallery"],
    "gallery_dirs": ["auto_tutorial", "auto_gallery"],
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "show_memory": False,
    "min_reported_time": 1,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib", "seaborn"),
    "capture_repr": ("_repr_html_", "__repr__"),
    # no "computation times" pages: they load jQuery and DataTables from outside hosts, and timings of a
    # docs build on a shared machine say nothing a reader needs
    "write_computation_times": False,
}

# --- HTML
html_theme = "furo"
html_title = f"lowrank_pool {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {"navigation_with_keys": True}
html_show_sourcelink = False
