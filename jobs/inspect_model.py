"""`python -m jobs.inspect_model PATH`: a registry entry from what a local model folder says
about itself (registry.card), printed to paste into your registry file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from registry.card import registry_entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.inspect_model", description=__doc__)
    parser.add_argument("path", help="a local model folder")
    parser.add_argument("--name", help="registry name for the entry (default: the folder name)")
    args = parser.parse_args(argv)
    folder = Path(args.path).expanduser().resolve()
    if not folder.is_dir():
        print(
            f"error: {args.path!r} is not a local model folder (hub ids are not fetched: "
            "download the model first)",
            file=sys.stderr,
        )
        return 2
    entry = registry_entry(folder, args.name or folder.name)
    print(entry, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
