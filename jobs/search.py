"""`python -m jobs.search OUTPUT QUERY`: exact search over a job's OUTPUT, with the query
embedded exactly as the documents were (jobs.query.QueryEncoder).

Prints rank, score, collection, id and the start of the text (when the run kept it). How to
check an index after a run, and the reference the vector-store snippets are tested against.
Exit codes: 0 found; 2 no such column or collection (the ones OUTPUT has are listed), or an
OUTPUT without a usable manifest.
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.pipeline.folders import MANIFEST, OutputFolder
from jobs.retrieval.encoder import ManifestError, QueryEncoder, check_manifest
from jobs.retrieval.search import SearchError, check_request, search
from registry import PolicyError

EXIT_OK, EXIT_REFUSED = 0, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.search", description=__doc__)
    parser.add_argument("output", metavar="OUTPUT", help="a job's OUTPUT: local path or URI")
    parser.add_argument("query", metavar="QUERY", help="the text to search for")
    parser.add_argument("-k", type=int, default=10, help="how many hits (default 10)")
    parser.add_argument("--collection", help="search one collection only")
    parser.add_argument("--column", help="vector column (default: the widest float one)")
    parser.add_argument(
        "--rescore",
        type=int,
        default=0,
        help="with a quantized column: rescore this many best candidates with the float column",
    )
    parser.add_argument("--storage-options", default="{}", help="fsspec options as JSON")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = OutputFolder(args.output, json.loads(args.storage_options))
    try:
        manifest = check_manifest(output.read_json(MANIFEST), output.uri)
        # Refused before the model loads.
        column = check_request(manifest, args.column, args.collection)
        encoder = QueryEncoder(
            manifest, output, device=args.device, trust_remote_code=args.trust_remote_code
        )
    except (ManifestError, SearchError, PolicyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_REFUSED
    query = {name: vectors[0] for name, vectors in encoder.encode([args.query]).items()}
    hits = search(output, query, column, args.k, args.collection, args.rescore)
    for rank, hit in enumerate(hits, start=1):
        text = "" if hit.text is None else " ".join(hit.text.split())[:80]
        print(f"{rank:>3}  {hit.score:8.4f}  {hit.collection:<12}  {hit.id:<24}  {text}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
