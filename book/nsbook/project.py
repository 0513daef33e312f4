"""The project around the book: settings from `pyproject.toml`, the repository button,
the source walk.

The repository URL and branch are written once, in `pyproject.toml` (`[project.urls]
Repository`), and read here with nbdev's own `get_config`, so the package metadata, the
theme's repository button and every Colab link agree. They are stored in the
`nsbook_project` config value, which the other extensions read and which Sphinx pickles
with the environment: a new URL rebuilds every page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphinx.application import Sphinx

from nsbook import extension_metadata

STATIC = Path(__file__).resolve().parent / "_static"


def project_settings(root: Path) -> dict[str, str]:
    """Repository URL, branch and package name, as nbdev 3 reads them from
    `pyproject.toml` in `root`, and the release tag of the package's version
    (tools/release.py)."""
    from nbdev.config import get_config

    cfg = get_config(str(root))  # [project.urls] Repository, [tool.nbdev]
    repo = (cfg.git_url or "").rstrip("/")
    if not repo.startswith("https://github.com/"):
        raise ValueError(
            f"pyproject.toml [project.urls] Repository = {repo!r}: "
            "expected https://github.com/OWNER/NAME"
        )
    from neural_stack import __version__

    return {
        "repository_url": repo,
        "branch": cfg.get("branch") or "main",
        # what Colab opens: the release the chapters' install cells install
        "release": f"v{__version__}",
        "lib_name": Path(cfg.lib_path).name,
    }


def _on_config_inited(app: Sphinx, config: Any) -> None:
    config.nsbook_project = settings = project_settings(Path(app.srcdir))
    opts = dict(config.html_theme_options or {})
    opts["repository_url"] = settings["repository_url"]
    opts["repository_branch"] = settings["branch"]
    # Jupyter Book refuses `use_repository_button` without a URL in _config.yml; the URL
    # is set here.
    opts["use_repository_button"] = True
    config.html_theme_options = opts
    # The source folder is the repository root. Sphinx's include_patterns choose the
    # pages, but Sphinx still walks every folder not matched by exclude_patterns: prune
    # every top-level entry that holds no page (.venv, data or run folders a chapter may
    # create), beyond the fixed list in _config.yml.
    roots = {pattern.split("/")[0] for pattern in config.include_patterns}
    extra = sorted(p.name for p in Path(app.srcdir).iterdir() if p.name not in roots)
    config.exclude_patterns = list(config.exclude_patterns) + [
        p for p in extra if p not in config.exclude_patterns
    ]
    # Sphinx copies the contents of html_static_path entries into the site's _static/.
    config.html_static_path = list(config.html_static_path) + [str(STATIC)]


def setup(app: Sphinx) -> dict[str, Any]:
    # Filled from pyproject.toml when the configuration is read; not meant to be set in
    # _config.yml.
    app.add_config_value("nsbook_project", {}, "env", types=[dict])
    app.connect("config-inited", _on_config_inited)
    app.add_css_file("nsbook.css")
    return extension_metadata()
