"""Sphinx configuration: `make docs` builds the HTML into docs/_build/html.

The guide and the benchmark tables are the README's own text (MyST ``include``), so the two
never drift; the API reference is generated from the docstrings (autosummary, numpydoc); the
tutorial notebook is executed at build time on a small subset and rendered (myst-nb).
"""

import os
import re
import sys
from pathlib import Path

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout, installed or not

import eigenpro  # noqa: E402

project = "eigenpro"
author = "eigenpro developers"
copyright = "eigenpro developers"
release = version = eigenpro.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_nb",  # also registers myst_parser for the .md pages
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# API reference: one page per public object; a module's members are its __all__.
autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc sections say it, and torch's types would be noise
numpydoc_show_class_members = False  # autosummary lists them; avoids duplicate objects

# MyST: README's "#numerical-robustness"-style links need heading anchors.
myst_heading_anchors = 3
# The tutorial is saved without outputs; the build runs it (its small setting: a few
# thousand points, seconds) so that the page shows its figures, and fails on any error.
os.environ.setdefault("EIGENPRO_TUTORIAL_SMALL", "1")
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
# tqdm's progress widget has no static rendering: its text fallback is shown instead.
suppress_warnings = ["mystnb.unknown_mime_type"]

html_theme = "pydata_sphinx_theme"
html_title = f"eigenpro {release}"
html_theme_options = {
    "github_url": "https://github.com/eigenpro/eigenpro",
    "navigation_with_keys": False,
}

# The tutorial notebook lives in examples/, outside the source directory: copy it in at each
# build, or say that it is absent, so that the build works either way.
GENERATED = DOCS / "_generated"
NOTEBOOK = ROOT / "examples" / "tutorial.ipynb"
MISSING = (
    "# Tutorial\n\nThe tutorial notebook, `examples/tutorial.ipynb`, is not in this checkout.\n"
)


def _sync(target, content):
    """Write ``content`` to ``target`` only when it differs (keeps rebuilds incremental)."""
    if not target.exists() or target.read_bytes() != content:
        target.write_bytes(content)


GENERATED.mkdir(exist_ok=True)
if NOTEBOOK.exists():
    (GENERATED / "tutorial.md").unlink(missing_ok=True)
    _sync(GENERATED / "tutorial.ipynb", NOTEBOOK.read_bytes())
else:
    (GENERATED / "tutorial.ipynb").unlink(missing_ok=True)
    _sync(GENERATED / "tutorial.md", MISSING.encode())

RESULTS = ROOT / "benchmarks" / "results"
# The guide is the README without its measured figures, which are on the benchmarks page.
BENCHMARKS_HEADING = "## Benchmarks and measured figures"
RESULTS_END = "<!-- results:end -->"


def _slug(title):
    try:
        from myst_parser.slugs import github_slugify
    except ImportError:  # myst-parser < 5.2
        from myst_parser.mdit_to_docutils.base import default_slugify as github_slugify
    return github_slugify(title)


def link_figures_from_guide(app, relative_path, parent_docname, content):
    """In the guide, README links to a heading of the measured figures (``](#slug)``) go to
    the benchmarks page, where that part of the README is included."""
    if parent_docname != "guide" or Path(relative_path).name != "README.md":
        return
    text = content[0]
    figures = text[text.find(BENCHMARKS_HEADING) : text.find(RESULTS_END)]
    slugs = {_slug(title) for title in re.findall(r"^#+ (.+)$", figures, flags=re.MULTILINE)}

    def retarget(match):
        slug = match.group(1)
        return f"](benchmarks.md#{slug})" if slug in slugs else match.group(0)

    content[0] = re.sub(r"\]\(#([\w-]+)\)", retarget, text)


def skip_member(app, what, name, obj, skip, options):
    """Skip scikit-learn's generated ``set_*_request`` methods (metadata routing): their
    docstrings are scikit-learn's, with references into scikit-learn's own documentation."""
    if re.fullmatch(r"set_\w+_request", name):
        return True
    return None


class BenchmarkPlots(SphinxDirective):
    """Every PNG in ``benchmarks/results/``, in name order, each as a figure."""

    def run(self):
        here = Path(self.env.doc2path(self.env.docname)).parent
        figures = []
        for png in sorted(RESULTS.glob("*.png")):
            self.env.note_dependency(str(png))
            figure = nodes.figure(ids=[f"plot-{png.stem.replace('_', '-')}"])
            figure += nodes.image(uri=os.path.relpath(png, here), alt=png.stem)
            figure += nodes.caption(text=f"benchmarks/results/{png.name}")
            figures.append(figure)
        return figures


def setup(app):
    app.add_directive("benchmark-plots", BenchmarkPlots)
    app.connect("include-read", link_figures_from_guide)
    app.connect("autodoc-skip-member", skip_member)
