"""A Sphinx extension for the book: each page loads every script once.

Jupyter Book 1.x registers sphinx-thebe's inline configuration script twice, so
every page declares ``const THEBE_JS_URL`` twice and the browser reports a
``SyntaxError`` on load. This extension drops repeated script entries from each
page's context before it is rendered. It is enabled in ``_config.yml``
(``sphinx.extra_extensions``).
"""

from __future__ import annotations

from typing import Any


def _script_key(script: Any) -> tuple:
    # The same inline script arrives once with filename None and once with "".
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {}) or {}
    return (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def unique_scripts(
    app: Any, pagename: str, templatename: str, context: dict, doctree: Any
) -> None:
    """``html-page-context`` handler: keep the first of identical scripts."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app: Any) -> dict[str, Any]:
    """Registers the handler; safe for parallel reads and writes."""
    app.connect("html-page-context", unique_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
