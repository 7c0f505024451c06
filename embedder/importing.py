"""sentence-transformers, imported without scikit-learn.

`import sentence_transformers` costs about 5-7 CPU-seconds, and 1.2-1.9 of them are scikit-learn
(with SciPy and narwhals behind it). sentence-transformers needs it at import time for one
name only, `pairwise_distances` in `util.similarity`, which only its sparse Manhattan
similarity calls: nothing this job runs. Every replica start and every process that embeds
queries pays the import, so it is done here with scikit-learn stood in for until that function
is really called. Nothing else changes: the modules, weights and vectors are
sentence-transformers' own.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import sys
import types
from typing import Any

log = logging.getLogger(__name__)

# The names sentence-transformers imports from scikit-learn when it is imported.
DEFERRED = {"sklearn.metrics": ("pairwise_distances",)}


def import_sentence_transformers() -> types.ModuleType:
    """The `sentence_transformers` module, imported once per process. A process that already
    has scikit-learn (or sentence-transformers) imports it as usual."""
    already = "sentence_transformers" in sys.modules or "sklearn" in sys.modules
    stand_ins = {} if already else sklearn_stand_ins()
    if not stand_ins:
        return importlib.import_module("sentence_transformers")
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("sentence_transformers")
    except Exception as error:  # noqa: BLE001 - whatever went wrong, the plain import is next
        # A sentence-transformers that wants more of scikit-learn at import time: import both
        # in full (slower, the same modules).
        log.debug("sentence-transformers imported with scikit-learn: %s", error)
        forget_modules("sentence_transformers", "sklearn")
        return importlib.import_module("sentence_transformers")
    finally:
        # A later `import sklearn` anywhere in the process gets the real package.
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def sklearn_stand_ins() -> dict[str, types.ModuleType]:
    """Empty `sklearn` and `sklearn.metrics` modules whose DEFERRED names import the real
    function on their first call (none where scikit-learn is not found). They carry the real
    packages' specs (found, not run): torch looks scikit-learn up by its spec while it is
    imported. The package has no search path: any other scikit-learn module imported under it
    fails, and the import is then done in full."""
    package_spec = importlib.util.find_spec("sklearn")
    if package_spec is None or not package_spec.submodule_search_locations:
        return {}
    package = stand_in(package_spec)
    package.__path__ = []
    modules = {"sklearn": package}
    for module_name, names in DEFERRED.items():
        spec = importlib.machinery.PathFinder.find_spec(
            module_name, package_spec.submodule_search_locations
        )
        if spec is None:
            return {}
        module = stand_in(spec)
        for name in names:
            setattr(module, name, deferred(module_name, name))
        modules[module_name] = module
    return modules


def stand_in(spec) -> types.ModuleType:
    module = types.ModuleType(spec.name)
    module.__spec__ = spec
    module.__file__ = spec.origin
    return module


def deferred(module_name: str, name: str):
    """A function that imports `module_name.name` when called, and calls it."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module_name), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def forget_modules(*packages: str) -> None:
    for name in list(sys.modules):
        if name.split(".", 1)[0] in packages:
            del sys.modules[name]
