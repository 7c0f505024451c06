"""INPUT and OUTPUT on S3, over real HTTP to a moto server on loopback; secrets never leak."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, job_env, plain_env, run_job_cli
from tests.shared_head import shared_ray
from tests.test_resume import make_corpus, wait_until

SECRET = "s3cr3t-Value-That-Must-Never-Be-Logged"
KEY_ID = "AKIDTESTINGONLY0001"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    # The module's Ray head starts with these in its environment, as the nodes of a cluster
    # have their credentials: its workers never see a joining job's own variables (README).
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        shared_ray()
    import s3fs

    fs = s3fs.S3FileSystem(key=KEY_ID, secret=SECRET, client_kwargs={"endpoint_url": endpoint})
    fs.mkdir("corpus")
    fs.mkdir("vectors")
    yield {"fs": fs, "env": env, "endpoint": endpoint}
    server.stop()


@pytest.fixture(scope="module")
def s3_corpus(s3, tmp_path_factory):
    local = tmp_path_factory.mktemp("s3-corpus")
    expected = make_corpus(local)
    s3["fs"].put(str(local) + "/", "corpus/in/", recursive=True)
    return expected


def docs_collection(corpus: dict[str, str]) -> dict[str, str]:
    """The rows under corpus/in/docs: make_corpus puts every third file there."""
    return {i: t for i, t in corpus.items() if int(i.split("-")[0][1:]) % 3 == 0}


def s3_ids(fs, prefix: str) -> collections.Counter:
    fs.invalidate_cache()
    ids = collections.Counter()
    for path in fs.glob(f"{prefix}/collection=*/*.parquet"):
        with fs.open(path, "rb") as handle:
            ids.update(pq.read_table(handle, columns=["id"]).column("id").to_pylist())
    return ids


def s3_part_count(fs, prefix: str) -> int:
    fs.invalidate_cache()
    return len(fs.glob(f"{prefix}/collection=*/*.parquet"))


def test_kill_and_resume_on_s3_and_no_secret_anywhere(s3, s3_corpus):
    fs = s3["fs"]
    env = plain_env(**s3["env"])  # its own Ray: the whole process group is killed
    # 44 files of 30 rows packed into about 26 blocks of ~64 rows.
    args = ["s3://corpus/in", "s3://vectors/run1", "all-miniLM-l6", "--block-rows", "64"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.embed", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: s3_part_count(fs, "vectors/run1") >= 5 or proc.poll() is not None, 240, "slow"
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    partial = s3_ids(fs, "vectors/run1")
    assert partial and all(n == 1 for n in partial.values())
    assert len(partial) < len(s3_corpus)

    result = run_job_cli(args, env=job_env(**s3["env"]))
    assert result.returncode == 0, result.stderr[-3000:]
    ids = s3_ids(fs, "vectors/run1")
    assert set(ids) == set(s3_corpus) and all(n == 1 for n in ids.values())
    manifest_text = fs.cat("vectors/run1/_manifest.json").decode()
    manifest = json.loads(manifest_text)
    assert 0 < manifest["rows_embedded"] < len(s3_corpus)
    assert manifest["rows_in_output"] == len(s3_corpus)
    # Nothing left: decided from the two listings (ETags on S3) and the manifest.
    again = run_job_cli(args, env=job_env(**s3["env"]))
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr[-3000:]
    everything = result.stdout + result.stderr + again.stderr + manifest_text
    everything += fs.cat("vectors/run1/_fingerprint.json").decode()
    assert SECRET not in everything and KEY_ID not in everything


def test_a_query_encoder_reads_its_output_from_s3(s3, s3_corpus):
    """QueryEncoder.from_output on the OUTPUT the kill-and-resume test left in S3: it rebuilds
    the model from the manifest there and re-embeds stored rows as they were."""
    import numpy as np

    from jobs.query import QueryEncoder

    fs = s3["fs"]
    path = sorted(fs.glob("vectors/run1/collection=docs/*.parquet"))[0]
    with fs.open(path, "rb") as handle:
        table = pq.read_table(handle).slice(0, 8)
    options = {"key": KEY_ID, "secret": SECRET, "client_kwargs": {"endpoint_url": s3["endpoint"]}}
    encoder = QueryEncoder.from_output("s3://vectors/run1", storage_options=options)
    again = encoder.encode(table.column("text").to_pylist(), as_documents=True)["embedding"]
    stored = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.sum(stored * again, axis=1).min() >= 0.9999


def test_storage_options_from_the_environment_are_masked(s3, s3_corpus):
    """Credentials given as EMBED_STORAGE_OPTIONS work, and show up only as ***."""
    # Its own Ray, with no AWS_* anywhere: the workers reach the store only through the
    # storage options that travel with their tasks (the module's head has the variables).
    env = plain_env(
        AWS_DEFAULT_REGION="us-east-1",
        EMBED_STORAGE_OPTIONS=json.dumps(
            {"key": KEY_ID, "secret": SECRET, "endpoint_url": s3["endpoint"]}
        ),
    )
    result = run_job_cli(
        ["s3://corpus/in/docs", "s3://vectors/run2", "bge-small-never-used"], env=env
    )
    assert result.returncode == 2  # an unknown model: refused before any work
    assert SECRET not in result.stderr
    result = run_job_cli(["s3://corpus/in/docs", "s3://vectors/run2", "all-miniLM-l6"], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest_text = s3["fs"].cat("vectors/run2/_manifest.json").decode()
    options = json.loads(manifest_text)["settings"]["storage_options"]
    assert options == {"key": "***", "secret": "***", "endpoint_url": s3["endpoint"]}
    assert SECRET not in manifest_text + result.stdout + result.stderr
    assert KEY_ID not in manifest_text + result.stdout + result.stderr


def test_flaky_object_storage_gives_every_row_once_and_a_lost_file_exits_1(s3, s3_corpus):
    """Through a proxy that throttles (503 SlowDown), resets connections and cuts bodies short,
    the storage library's retries carry the run to a complete output. When one file's reads
    fail every time, the run commits everything else, exits 1 naming the file, and a rerun
    through a healthy endpoint finishes the job."""
    from tests.flaky_proxy import Faults, FlakyProxy

    fs = s3["fs"]
    # The docs collection alone (15 of the 44 files): its requests still meet every fault.
    docs = docs_collection(s3_corpus)
    args = ["s3://corpus/in/docs", "s3://vectors/flaky", "all-miniLM-l6"]
    faults = Faults(slowdown_every=9, reset_every=13, cut_body_every=7)
    # Joined to the module's head, whose workers know the store's own endpoint: the proxy's is
    # given as a storage option, which travels with every task.
    env = job_env(**s3["env"])
    with FlakyProxy(s3["endpoint"], faults) as proxy:
        through_proxy = json.dumps({"endpoint_url": proxy.url})
        result = run_job_cli([*args, "--storage-options", through_proxy], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"slowdown", "reset", "cut_body"} <= set(faults.injected), faults.injected
    ids = s3_ids(fs, "vectors/flaky")
    assert set(ids) == set(docs) and all(n == 1 for n in ids.values())

    broken = "part-003.jsonl"  # corpus/in/docs/part-003.jsonl
    lost = {i for i in docs if i.startswith("f3-")}
    args = ["s3://corpus/in/docs", "s3://vectors/lost-file", "all-miniLM-l6"]
    # Three attempts instead of ten: the same retries, a shorter wait for the test.
    fewer_retries = {"config_kwargs": {"retries": {"max_attempts": 3}}}
    with FlakyProxy(s3["endpoint"], Faults(broken=broken)) as proxy:
        options = json.dumps(fewer_retries | {"endpoint_url": proxy.url})
        failed = run_job_cli([*args, "--storage-options", options], env=env)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert f"could not read {broken}" in failed.stderr
    ids = s3_ids(fs, "vectors/lost-file")
    assert set(ids) == set(docs) - lost and all(n == 1 for n in ids.values())
    manifest = json.loads(fs.cat("vectors/lost-file/_manifest.json"))
    assert [f["file"] for f in manifest["files_unread"]] == [broken]
    assert manifest["files_rejected"] == 0 and manifest["rows_rejected"] == 0

    rerun = run_job_cli(args, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ids = s3_ids(fs, "vectors/lost-file")
    assert set(ids) == set(docs) and all(n == 1 for n in ids.values())
    manifest = json.loads(fs.cat("vectors/lost-file/_manifest.json"))
    assert manifest["rows_embedded"] == len(lost) and manifest["files_unread"] == []


def test_the_lease_on_s3_is_created_only_if_absent(s3):
    """Exclusive create on S3 is a conditional PUT (If-None-Match: *), so of two runs that
    start together exactly one holds OUTPUT."""
    from jobs.pipeline.folders import LEASE, OutputFolder
    from jobs.pipeline.lease import Lease, LeaseHeld

    options = {"key": KEY_ID, "secret": SECRET, "client_kwargs": {"endpoint_url": s3["endpoint"]}}
    output = OutputFolder("s3://vectors/leased", options)
    assert output.create_json("probe.json", {"n": 1}) is True
    assert output.create_json("probe.json", {"n": 2}) is False
    assert output.read_json("probe.json") == {"n": 1}
    with Lease.take(output, timeout=300) as lease:
        with pytest.raises(LeaseHeld, match=lease.record["run_id"]):
            Lease.take(OutputFolder("s3://vectors/leased", options), timeout=300)
        lease.renew()  # a conditional PUT on the ETag it last wrote
        assert output.read_json(LEASE)["beats"] == 1
    assert not output.exists(LEASE)


def test_a_lease_replaced_on_s3_is_never_written_back(s3):
    """Renewal is If-Match on the ETag the run last wrote: after another run replaced the
    lease, the renewal fails (and the run knows it lost OUTPUT) instead of overwriting it."""
    from jobs.pipeline.folders import LEASE, OutputFolder
    from jobs.pipeline.lease import Lease, LeaseLost

    options = {"key": KEY_ID, "secret": SECRET, "client_kwargs": {"endpoint_url": s3["endpoint"]}}
    output = OutputFolder("s3://vectors/taken", options)
    lease = Lease.take(output, timeout=300)
    taker = {"run_id": "the-taker"}
    output.write_json(LEASE, taker)
    lease.renew()
    assert output.read_json(LEASE) == taker
    with pytest.raises(LeaseLost, match="now held by run the-taker"):
        lease.check()
    lease.release()
    assert output.read_json(LEASE) == taker
