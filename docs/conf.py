"""Sphinx configuration for numpyro_cds.

The build needs no network: no intersphinx, no sphinx-gallery.  Cross-references to
NumPyro, JAX or ArviZ objects in docstrings render as plain literals
(``nitpicky = False``).
"""

import os
import sys

# Find the package from the repository root, whether or not it is installed.
sys.path.insert(0, os.path.abspath(".."))

import numpyro_cds  # noqa: E402

project = "numpyro_cds"
author = "numpyro_cds developers"
copyright = "numpyro_cds developers"
version = numpyro_cds.__version__
release = numpyro_cds.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build"]
templates_path: list[str] = []

# -- autodoc ---------------------------------------------------------------
autodoc_mock_imports: list[str] = []
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# Show jaxtyping annotations as written (``PRNGKeyArray``, ``Float[Array, "dim"]``)
# rather than expanded into unions of private jaxlib types.
autodoc_type_aliases = {"PRNGKeyArray": "PRNGKeyArray", "Array": "Array"}

# -- napoleon (Google style only) -------------------------------------------
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# ``Attributes:`` sections become ``:ivar:`` fields, so that NamedTuple and dataclass
# fields documented by autodoc are not described twice.
napoleon_use_ivar = True
# Field types are in the class signature already.
napoleon_attr_annotations = False

nitpicky = False

# -- HTML ------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"numpyro_cds {release}"
html_theme_options = {
    "description": "Consistent diffusion samplers for NumPyro models",
    "fixed_sidebar": True,
}


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """Leave out the ``Alias for field number N`` entries of NamedTuple fields.

    The fields appear in the class signature, and where the class docstring has an
    ``Attributes:`` section they are described there.
    """
    if what == "class" and (getattr(obj, "__doc__", None) or "").startswith(
        "Alias for field number"
    ):
        return True
    return None


def setup(app):
    """Sphinx hook: hide the generated docs of NamedTuple fields."""
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
