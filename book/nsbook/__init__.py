"""Sphinx extensions of the neural-stack course book, one concern each, all loaded by
`book/_config.yml`.

* `nsbook.project`: repository URL, branch and package name from `pyproject.toml`; the
  theme's repository button; which folders Sphinx may skip; the book's stylesheet.
* `nsbook.notebooks`: each chapter notebook as readers see it (nbdev directives hidden,
  exported cells labelled, solutions folded, Colab links).
* `nsbook.scripts`: live plotly figures drawn by a local plotly.js, and page scripts
  without duplicates or CDN loaders, so the site works offline.
* `nsbook.nbval_report`: the `{nbval-report}` directive (execution times of the last
  nbval run).
* `nsbook.chapters`: the `{chapter}` role of the curriculum pages.
* `nsbook.api`: the API reference, a page per module of the package, written from its
  code when the build starts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

__version__ = "0.2.0"


def extension_metadata() -> dict[str, Any]:
    """What every extension's `setup()` returns.

    `env_version` is a hash of this package's source: Sphinx re-reads every page when it
    changes, so editing the glue rebuilds the whole book instead of leaving pages that
    the old glue rendered in the pickled environment. One hash for all modules, since
    they build on one another.
    """
    source = b"".join(
        p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py"))
    )
    env_version = int(hashlib.sha256(source).hexdigest()[:8], 16)
    return {
        "version": __version__,
        "env_version": env_version,
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
