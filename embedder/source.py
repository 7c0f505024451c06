"""Where a model's weights are, decided on the machine that loads them.

A registry entry names the weights three ways: a folder (`path`), a Python package that ships
them (`local_package`, e.g. the bundled all-MiniLM-L6-v2), or a hub id. The package's folder is
a site-packages path of whichever machine installed it, so it is looked up where the model is
loaded (a Ray worker), never on the driver and shipped.
"""

from __future__ import annotations

import importlib


def resolve_source(source: str, is_local: bool, local_package: str = "") -> tuple[str, bool]:
    """(where to load from, whether that is a local folder): `source` when it is a folder; else
    the folder of `local_package` when that package is installed here; else `source` (a hub
    id)."""
    if is_local:
        return source, True
    if local_package:
        try:
            package = importlib.import_module(local_package)
        except ImportError:
            pass
        else:
            return str(package.get_model_path()), True
    return source, False
