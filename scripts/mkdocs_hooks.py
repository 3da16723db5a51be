"""mkdocs hook: drop nav entries whose page does not exist (yet).

Several engineers write pages in parallel; mkdocs.yml lists every planned page and
this hook removes the ones missing at build time, so ``mkdocs build --strict``
passes on any branch and the nav needs no edits when a page lands.
"""

from __future__ import annotations

import os


def _filter(items, docs_dir):
    out = []
    for item in items:
        if isinstance(item, dict):
            new = {}
            for title, target in item.items():
                if isinstance(target, list):
                    sub = _filter(target, docs_dir)
                    if sub:
                        new[title] = sub
                elif isinstance(target, str) and ("://" in target or os.path.exists(os.path.join(docs_dir, target))):
                    new[title] = target
            if new:
                out.append(new)
        elif isinstance(item, str):
            if os.path.exists(os.path.join(docs_dir, item)):
                out.append(item)
    return out


def on_config(config, **kwargs):
    if config.get("nav"):
        config["nav"] = _filter(config["nav"], config["docs_dir"])
    return config
