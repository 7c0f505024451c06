"""The README stays true to the code: the registry table and every option."""

from __future__ import annotations

from jobs.pipeline.settings import POSITIONAL, EmbedSettings
from registry import Registry
from registry.__main__ import markdown_table
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_readme_shows_the_registry_table_as_generated():
    assert markdown_table(Registry.load()) in README


def test_readme_documents_every_option_and_its_variable():
    for name in EmbedSettings.model_fields:
        flag = name.upper() if name in POSITIONAL else "--" + name.replace("_", "-")
        assert f"`{flag}`" in README, flag
        assert f"`EMBED_{name.upper()}`" in README, name


def test_readme_gives_the_commands_ci_and_newcomers_use():
    assert "make demo" in README and "make test" in README and "make install" in README
    assert "make test" in (REPO / ".ci" / "run").read_text()
