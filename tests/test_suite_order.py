"""The suite's own order (tests/conftest.py): the longest modules it names first must exist, or
a renamed module would silently lose its early place and the suite's end would grow."""

from __future__ import annotations

from tests.conftest import LONGEST_FIRST, REPO


def test_every_module_named_longest_first_exists_once():
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
    missing = [name for name in LONGEST_FIRST if not (REPO / "tests" / f"{name}.py").is_file()]
    assert not missing, f"LONGEST_FIRST names modules that are gone: {missing}"
