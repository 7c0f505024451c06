"""INPUT and OUTPUT: the only places that touch storage.

Each folder resolves its fsspec filesystem and root once per process (datatrove's `DataFolder`
is the model) and is small enough to ship to Ray workers, which resolve it again on their side.
Nothing else in the job builds a path or takes storage options. `OutputFolder` alone knows
OUTPUT's layout:

    _fingerprint.json                       this OUTPUT's settings (jobs.pipeline.commit)
    _calibration.json                       the calibration sample's record: int8/uint8 ranges,
                                            the rotation (jobs.pipeline.calibration)
    _rotation.npy                           the rotation matrix, with --rotate pca
    _quantized.json                         the int8 model's record, with --quantize int8
    _quantized/<file>                       the int8 model (jobs.pipeline.calibration)
    _lease.json                             the run that holds OUTPUT now (jobs.pipeline.lease)
    _lease.json.lock                        while a run changes the lease on local disk
    _manifest.json                          the last finished run (jobs.pipeline.manifest)
    _rejected/part-<block id>.jsonl         rejections, one list per block that has any
    collection=<c>/part-<block id>.parquet  one file per block and collection

Nothing else is the job's: `--overwrite` removes these files and refuses to start where OUTPUT
holds any other (`foreign_files`). A failed write anywhere in OUTPUT is an OutputWriteError
naming the file and the cause.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import posixpath
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import fsspec
from fsspec.compression import compr
from fsspec.utils import infer_compression

from jobs.pipeline.units import BlockId, InputFile, file_format

DEFAULT_COLLECTION = "default"
MANIFEST = "_manifest.json"
FINGERPRINT = "_fingerprint.json"
CALIBRATION = "_calibration.json"
ROTATION = "_rotation.npy"
LEASE = "_lease.json"
LEASE_LOCK = "_lease.json.lock"
# Markers of an earlier version's takeovers: removed by the next run that holds the lease.
LEGACY_TAKEOVER = "_lease.takeover-"
QUANTIZED = "_quantized.json"
QUANTIZED_FOLDER = "_quantized"
RUN_RECORDS = (MANIFEST, FINGERPRINT, CALIBRATION, ROTATION, QUANTIZED)
REJECTED = "_rejected"
COLLECTION_PREFIX = "collection="
# Local files are written under this dot-name first: readers that glob *.parquet skip it.
TEMP_MARK = ".tmp-"
# Object stores throttle (503 SlowDown) and drop connections; botocore retries both in its
# "standard" mode, with backoff. Ten attempts instead of its default three or five: a batch
# job would rather wait than lose a file. Your own storage options win over these.
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {"retries": {"max_attempts": 10, "mode": "standard"}}
}


class InputError(ValueError):
    """INPUT cannot be used at all (missing, not a folder, no corpus files)."""


class OutputError(ValueError):
    """OUTPUT cannot be used: it overlaps INPUT, or --overwrite would remove files the job
    did not write."""


class OutputWriteError(RuntimeError):
    """Writing or removing a file in OUTPUT failed (a full disk, permissions, the storage):
    the run stops and says so in one line; a rerun resumes. Not an OSError, so that no error
    handling for input files can take it for something else."""

    @classmethod
    def of(cls, url: str, cause: BaseException) -> OutputWriteError:
        return cls(f"could not write {url}: {type(cause).__name__}: {cause}")


class StorageReadError(Exception):
    """Reading an input file failed in the storage itself (a reset connection, throttling, a
    file replaced under the reader), after the storage library's own retries. Not bad input:
    the file is left for a rerun. Deliberately not an OSError, so that no decoder's error
    handling (gzip, Parquet) can take it for corrupt content."""

    def __init__(self, relpath: str, cause: BaseException):
        super().__init__(f"{relpath}: {type(cause).__name__}: {cause}")
        self.relpath = relpath


@functools.cache
def storage_errors() -> tuple[type[BaseException], ...]:
    """What storage libraries raise when the storage itself fails, after their own retries:
    OSError (connections, timeouts, missing or vanished files, permissions, and s3fs's
    translation of S3 errors), botocore's and aiohttp's own errors. Anything else (a
    MemoryError, a bug) is not a storage failure and is never reported as one."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:
        pass
    try:
        from aiohttp import ClientError as HttpClientError

        errors.append(HttpClientError)
    except ImportError:
        pass
    return tuple(errors)


class _GuardedReads(io.RawIOBase):
    """A storage file whose every storage failure is a StorageReadError: decoders stacked on
    top (gzip, Parquet) then raise only for what they decode."""

    def __init__(self, handle, relpath: str):
        self.handle = handle
        self.relpath = relpath

    def _guarded(self, method, *args):
        try:
            return method(*args)
        except storage_errors() as err:
            raise StorageReadError(self.relpath, err) from err

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._guarded(self.handle.read, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._guarded(self.handle.seek, offset, whence)

    def tell(self) -> int:
        return self._guarded(self.handle.tell)

    def close(self) -> None:
        try:
            self.handle.close()
        finally:
            super().close()


class Folder:
    """A folder on any fsspec storage, given as a local path or a URI."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None):
        # Local paths become absolute: Ray workers do not share the driver's working directory.
        self.uri = uri if "://" in uri else os.path.abspath(uri)
        defaults = S3_DEFAULTS if self.uri.split("://", 1)[0] in ("s3", "s3a") else {}
        self.storage_options = merged(defaults, storage_options or {})
        self._resolved: tuple[Any, str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A worker resolves the filesystem itself (its own connections, its own caches).
        return {**self.__dict__, "_resolved": None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def _filesystem(self) -> tuple[Any, str]:
        if self._resolved is None:
            fs, root = fsspec.core.url_to_fs(self.uri, **self.storage_options)
            self._resolved = fs, root.rstrip("/")
        return self._resolved

    @property
    def fs(self):
        """The filesystem, with listing caches dropped: other processes (Ray workers) write
        here too, and a cached listing of an object store would hide their files."""
        fs, _ = self._filesystem()
        fs.invalidate_cache()
        return fs

    @property
    def root(self) -> str:
        return self._filesystem()[1]

    @property
    def protocols(self) -> tuple[str, ...]:
        """The filesystem's protocol names, first the one it goes by ("file", "s3", ...)."""
        protocol = self._filesystem()[0].protocol
        return protocol if isinstance(protocol, tuple) else (protocol,)

    @property
    def is_local(self) -> bool:
        return "file" in self.protocols or "local" in self.protocols

    def path(self, relpath: str = "") -> str:
        """The filesystem path of a file given relative to this folder."""
        return posixpath.join(self.root, relpath) if relpath else self.root

    def url(self, relpath: str = "") -> str:
        """How a file is named to the user: the folder's URI joined with the relative path."""
        return posixpath.join(self.uri.rstrip("/"), relpath) if relpath else self.uri

    def relative(self, path: str) -> str:
        return path[len(self.root) :].lstrip("/")

    @property
    def location(self) -> tuple[str, str]:
        """(storage, path) that names this folder whatever the spelling: local paths with
        links resolved, others as the filesystem's own path (bucket/key)."""
        if self.is_local:
            return "file", os.path.realpath(self.root)
        return self.protocols[0], self.root.rstrip("/")

    def inside(self, relpath: str) -> str:
        """`relpath` normalized, if it names a file inside this folder; OutputError if it
        leads out of it (an absolute path, a URI, "..", a link pointing elsewhere)."""
        normal = posixpath.normpath(relpath.replace("\\", "/"))
        escapes = (
            "://" in relpath
            or normal.startswith(("/", "../"))
            or normal in ("..", ".", "")
            or (self.is_local and not resolves_inside(self.path(normal), self.root))
        )
        if escapes:
            raise OutputError(f"{relpath!r} is not a file inside {self.uri!r}: not read")
        return normal

    def exists(self, relpath: str = "") -> bool:
        return self.fs.exists(self.path(relpath))

    def open(self, relpath: str, mode: str = "rb", **kwargs) -> IO:
        return self.fs.open(self.path(relpath), mode, **kwargs)

    def files(self) -> dict[str, int]:
        """Every file under the folder, at any depth: relative path -> size in bytes."""
        fs = self.fs
        if not fs.exists(self.root):
            return {}
        found = fs.find(self.root, detail=True)
        return {
            self.relative(path): int(info.get("size") or 0)
            for path, info in found.items()
            if info.get("type", "file") != "directory"
        }


def resolves_inside(path: str, root: str) -> bool:
    """Whether a local path, links resolved, lies under root."""
    return os.path.realpath(path).startswith(os.path.realpath(root).rstrip(os.sep) + os.sep)


def is_lease_file(relpath: str) -> bool:
    """The lease, its lock, the temp files its writes go through, an old takeover marker."""
    name = relpath.rsplit("/", 1)[-1]
    return "/" not in relpath and (
        name in (LEASE, LEASE_LOCK)
        or name.startswith((f"{LEASE}{TEMP_MARK}", f".{LEASE}{TEMP_MARK}", LEGACY_TAKEOVER))
    )


def check_apart(input_folder: Folder, output: Folder) -> None:
    """OutputError when OUTPUT is INPUT, lies inside it or contains it: the job would read its
    own output as input, and --overwrite would delete the corpus."""
    (input_storage, input_path), (output_storage, output_path) = (
        input_folder.location,
        output.location,
    )
    if input_storage != output_storage:
        return

    def inside(path: str, folder: str) -> bool:
        return path.startswith(folder.rstrip("/") + "/") or folder in ("", "/")

    if output_path == input_path:
        where = "is INPUT"
    elif inside(output_path, input_path):
        where = f"lies inside INPUT {input_folder.uri!r}"
    elif inside(input_path, output_path):
        where = f"contains INPUT {input_folder.uri!r}"
    else:
        return
    raise OutputError(
        f"OUTPUT {output.uri!r} {where}: the job would read its own output as input (and "
        "--overwrite would delete the corpus). Choose an OUTPUT outside INPUT."
    )


def merged(defaults: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """`options` over `defaults`, nested dicts merged key by key."""
    result = dict(defaults)
    for key, value in options.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


class InputFolder(Folder):
    """INPUT: a corpus of JSON Lines and Parquet files at any depth."""

    def list_files(self) -> list[InputFile]:
        """Every corpus file, in a stable order (sorted by path).

        A file's collection is its first folder under INPUT; files directly in INPUT belong to
        `default`. Folders and files starting with "." or "_" are skipped (hidden, or job
        output).
        """
        fs = self.fs
        if not fs.exists(self.root):
            raise InputError(f"INPUT {self.uri!r} does not exist")
        if not fs.isdir(self.root):
            raise InputError(f"INPUT {self.uri!r} is not a folder")
        found = []
        listing = fs.find(self.root, detail=True)
        for path in sorted(listing):
            parts = self.relative(path).split("/")
            if any(part.startswith((".", "_")) for part in parts):
                continue
            fmt = file_format(parts[-1])
            if fmt is not None:
                collection = parts[0] if len(parts) > 1 else DEFAULT_COLLECTION
                info = listing[path]
                size, version = int(info.get("size") or 0), file_version(info)
                found.append(InputFile("/".join(parts), collection, fmt, size, version))
        if not found:
            raise InputError(
                f"INPUT {self.uri!r} holds no corpus files (looked for *.jsonl, *.jsonl.gz, "
                "*.json, *.json.gz and *.parquet)"
            )
        return found

    @contextlib.contextmanager
    def open_input(self, input_file: InputFile) -> Iterator[IO[bytes]]:
        """A binary stream of the file's content, decompressed by its suffix (.gz).

        Storage failures surface as StorageReadError, decoding failures as the decoder's own
        errors: the caller tells a file it cannot reach from a file that is corrupt. Retries
        are the storage library's (for S3: botocore's retry mode, see S3_DEFAULTS).
        """
        relpath = input_file.relpath
        try:
            raw = self.open(relpath, "rb")
        except storage_errors() as err:
            raise StorageReadError(relpath, err) from err
        compression = infer_compression(relpath) if input_file.fmt == "jsonl" else None
        with io.BufferedReader(_GuardedReads(raw, relpath), buffer_size=1 << 20) as stream:
            if compression is None:
                yield stream
                return
            with compr[compression](stream, mode="rb") as decompressed:
                yield decompressed


def file_version(info: dict[str, Any]) -> str:
    """What a listing says of a file's content, beside its size: a hash where the storage
    keeps one (S3's ETag, GCS's md5/crc32c), else its generation or modification time (with
    the inode on local disk, so that a file replaced by a rename is a new file)."""
    for key in ("ETag", "etag", "md5Hash", "crc32c", "generation"):
        if info.get(key):
            return f"{key}:{str(info[key]).strip(chr(34))}"
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        if info.get(key) is not None:
            inode = f"/{info['ino']}" if info.get("ino") is not None else ""
            return f"{key}:{info[key]}{inode}"
    return ""


@dataclass(frozen=True)
class CommittedFile:
    """One block's output file, as found in OUTPUT before the run."""

    block_id: BlockId
    collection: str
    relpath: str


class OutputFolder(Folder):
    """OUTPUT: the only code that knows its layout (module docstring)."""

    # -- whole files, written atomically --------------------------------------------------

    @contextlib.contextmanager
    def _writing(self, relpath: str) -> Iterator[None]:
        """A storage failure while changing `relpath` as an OutputWriteError that names it."""
        try:
            yield
        except storage_errors() as err:
            raise OutputWriteError.of(self.url(relpath), err) from err

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Readers see the old file or the whole new one, never half of it.

        Local files go through a dot-named temp file, fsync and rename (the temp file is
        removed if the write fails); an object store PUT is already all-or-nothing.
        """
        path = self.path(relpath)
        with self._writing(relpath):
            if not self.is_local:
                self.fs.pipe_file(path, data)
                return
            os.makedirs(os.path.dirname(path), exist_ok=True)
            temp = os.path.join(
                os.path.dirname(path),
                f".{os.path.basename(path)}{TEMP_MARK}{os.getpid()}-{threading.get_ident()}",
            )
            try:
                with open(temp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise

    def write_json(self, relpath: str, payload: Any) -> None:
        self.write_bytes(relpath, json_bytes(payload))

    def create_json(self, relpath: str, payload: Any) -> bool:
        """Write the file only if it is not there yet (see swap_json); False when it was."""
        return self.swap_json(relpath, payload, expected=None) is not None

    # -- small records changed by compare-and-swap (the lease) ------------------------------

    @property
    def is_s3(self) -> bool:
        return "s3" in self.protocols

    def read_versioned(self, relpath: str) -> tuple[Any | None, str | None]:
        """The parsed file and its version, or (None, None) when it is not there. The version
        is what swap_json must be given to replace exactly this content: its ETag on S3, a
        hash of its bytes elsewhere."""
        path = self.path(relpath)
        fs = self.fs
        try:
            if self.is_s3:
                # ETag first: if the object changes before the GET, a swap on this older ETag
                # fails, so the content read can never be replaced on the strength of it.
                version = fs.info(path)["ETag"].strip('"')
                data = fs.cat_file(path)
            else:
                data = fs.cat_file(path)
                version = hashlib.sha1(data).hexdigest()
        except FileNotFoundError:
            return None, None
        return json.loads(data), version

    def swap_json(self, relpath: str, payload: Any, expected: str | None) -> str | None:
        """Write `payload` only if the file's version is still `expected` (None: only if the
        file is absent); returns the new version, or None when the file had changed.

        Atomic where the storage allows: on local disk under an exclusive lock of
        `<relpath>.lock` (flock: processes on one machine, and on NFS), on S3 a conditional
        PUT (If-Match on the ETag, If-None-Match: *). On other storage it reads, compares and
        writes: a race there can let two writers through.
        """
        data = json_bytes(payload)
        with self._writing(relpath):
            if self.is_s3:
                return self._s3_conditional("put_object", relpath, expected, Body=data)
            with self._locked(relpath):
                if self.read_versioned(relpath)[1] != expected:
                    return None
                self.write_bytes(relpath, data)
            return hashlib.sha1(data).hexdigest()

    def remove_versioned(self, relpath: str, expected: str) -> bool:
        """Remove the file only if its version is still `expected`; whether it was removed."""
        with self._writing(relpath):
            if self.is_s3:
                return self._s3_conditional("delete_object", relpath, expected) is not None
            with self._locked(relpath):
                if self.read_versioned(relpath)[1] != expected:
                    return False
                self.fs.rm(self.path(relpath))
            return True

    def _s3_conditional(self, method: str, relpath: str, expected: str | None, **kwargs):
        """An S3 request made only if the object's ETag is `expected` (None: if it is absent):
        the new ETag (or "" for a delete), or None when the condition failed."""
        bucket, key, _ = self.fs.split_path(self.path(relpath))
        condition = {"IfMatch": f'"{expected}"'} if expected else {"IfNoneMatch": "*"}
        try:
            answer = self.fs.call_s3(method, Bucket=bucket, Key=key, **condition, **kwargs)
        except (FileNotFoundError, FileExistsError):  # s3fs's words for 404 and 412
            return None
        except OSError as err:
            if failed_condition(err):
                return None
            raise
        finally:
            self.fs.invalidate_cache(self.path(relpath))
        return answer.get("ETag", "").strip('"')

    @contextlib.contextmanager
    def _locked(self, relpath: str) -> Iterator[None]:
        """An exclusive lock of `<relpath>.lock` for the local filesystem (NFS included). The
        lock file is removed when the holder is done, so OUTPUT keeps no lock file; a run that
        opened it just before then sees another inode under the name and tries again."""
        if not self.is_local:
            yield
            return
        import fcntl

        lock = self.path(relpath) + ".lock"
        os.makedirs(os.path.dirname(lock), exist_ok=True)
        while True:
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            try:
                if os.stat(lock).st_ino == os.fstat(descriptor).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(descriptor)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
            os.close(descriptor)

    def lease_leftovers(self) -> list[str]:
        """Files that runs killed while they changed the lease left behind (temp files, an old
        version's takeover markers): for the lease's new holder to remove."""
        return sorted(r for r in self.files() if is_lease_file(r) and r not in (LEASE, LEASE_LOCK))

    def read_json(self, relpath: str) -> Any | None:
        """The parsed file, or None when it is not there. One whole-object read: a file
        opened for ranged reads (s3fs) fails when another process replaces it in between, as
        the lease's heartbeat does."""
        try:
            data = self.fs.cat_file(self.path(relpath))
        except FileNotFoundError:
            return None
        return json.loads(data)

    def write_parquet(self, relpath: str, table) -> None:
        """Write a table as one Parquet file that readers see whole or not at all."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(relpath, sink.getvalue().to_pybytes())

    def remove(self, relpath: str) -> None:
        """Delete one file if it is there."""
        path = self.path(relpath)
        fs = self.fs
        with self._writing(relpath):
            if fs.exists(path):
                fs.rm(path)

    def row_count(self, relpath: str) -> int | None:
        """The rows of a Parquet file, from its footer; None when it cannot be read."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with self.open(relpath) as handle:
                return pq.ParquetFile(handle).metadata.num_rows
        except (OSError, pa.ArrowException):
            return None

    def has_files(self) -> bool:
        """Whether OUTPUT holds anything but the lease of the run that holds it."""
        return not all(is_lease_file(relpath) for relpath in self.files())

    def is_written_by_the_job(self, relpath: str) -> bool:
        """A file this job writes: a block file, a rejection list, a run record, a lease file,
        or a temp file of one of them."""
        return (
            relpath in RUN_RECORDS
            or relpath.startswith(f"{QUANTIZED_FOLDER}/")
            or is_lease_file(relpath)
            or self.is_job_file(relpath)
        )

    def foreign_files(self) -> list[str]:
        """Files in OUTPUT that this job did not write."""
        return sorted(r for r in self.files() if not self.is_written_by_the_job(r))

    def _remove_all(self, relpaths: list[str]) -> None:
        fs = self.fs
        for relpath in relpaths:
            with self._writing(relpath):
                fs.rm(self.path(relpath))

    def clear(self) -> list[str]:
        """Remove every file this job wrote (but the lease of the run that holds it) and the
        folders left empty; returns what was removed. Other files are not touched: a run that
        would clear OUTPUT refuses to start where there are any (jobs.pipeline.job)."""
        removed = [
            relpath
            for relpath in sorted(self.files())
            if self.is_written_by_the_job(relpath) and relpath != LEASE
        ]
        self._remove_all(removed)
        if self.is_local:
            for folder in {r.split("/", 1)[0] for r in removed if "/" in r}:
                with contextlib.suppress(OSError):
                    os.rmdir(self.path(folder))  # only if nothing else is in it
        return removed

    # -- block files -----------------------------------------------------------------------

    @staticmethod
    def block_file(collection: str, block_id: BlockId) -> str:
        return f"{COLLECTION_PREFIX}{collection}/{block_id.file_name()}"

    @staticmethod
    def parse_block_file(relpath: str) -> CommittedFile | None:
        """The block and collection of a block file's relative path; None for any other."""
        parts = relpath.split("/")
        if len(parts) != 2 or not parts[0].startswith(COLLECTION_PREFIX):
            return None
        block_id = BlockId.from_file_name(parts[1])
        if block_id is None:
            return None
        return CommittedFile(block_id, parts[0][len(COLLECTION_PREFIX) :], relpath)

    def committed_files(
        self, listing: dict[str, int] | None = None
    ) -> dict[BlockId, list[CommittedFile]]:
        """The block files in OUTPUT by block, from one listing (`listing`, a files() the
        caller already has, or a new one)."""
        found: dict[BlockId, list[CommittedFile]] = {}
        for relpath in sorted(self.files() if listing is None else listing):
            committed = self.parse_block_file(relpath)
            if committed is not None:
                found.setdefault(committed.block_id, []).append(committed)
        return found

    # -- rejections ------------------------------------------------------------------------

    @staticmethod
    def rejections_file(block_id: BlockId) -> str:
        return f"{REJECTED}/part-{block_id}.jsonl"

    def write_rejections(self, block_id: BlockId, lines: bytes) -> str:
        """One JSON Lines file per block, named by the block, so a retry overwrites it."""
        relpath = self.rejections_file(block_id)
        self.write_bytes(relpath, lines)
        return relpath

    def read_rejections(self) -> Iterator[dict[str, Any]]:
        """Every rejection record under _rejected/, file by file."""
        for relpath in sorted(self.files()):
            if relpath.startswith(f"{REJECTED}/") and relpath.endswith(".jsonl"):
                with self.open(relpath, "rt", encoding="utf-8") as handle:
                    yield from (json.loads(line) for line in handle if line.strip())

    # -- what is stale ---------------------------------------------------------------------

    def remove_stale(self, keep: set[str], listing: dict[str, int] | None = None) -> list[str]:
        """Remove every block file, rejection list and leftover temp file not in `keep`
        (of `listing`, a files() the caller already has; else of a new listing).

        Called once, after every block is committed, with the files this run wrote or found
        done. What goes: output of blocks an input file no longer has, of input files that are
        gone, files of a collection a redone block no longer has, rejection lists of files
        without rejections now, and temp files of writes that a crash interrupted.
        """
        stale = [
            relpath
            for relpath in sorted(self.files() if listing is None else listing)
            if relpath not in keep and self.is_job_file(relpath)
        ]
        self._remove_all(stale)
        return stale

    def is_job_file(self, relpath: str) -> bool:
        """A file that this job writes per block or per input file, or a temp file of a write
        (not the run's records, nor the lease's files, which the lease's holder looks after)."""
        name = relpath.rsplit("/", 1)[-1]
        if is_lease_file(relpath):
            return False
        if name.startswith(".") and TEMP_MARK in name:
            return True
        if relpath.startswith(f"{REJECTED}/"):
            return name.endswith(".jsonl")
        return self.parse_block_file(relpath) is not None


def json_bytes(payload: Any) -> bytes:
    return (json.dumps(payload, indent=2, default=str) + "\n").encode("utf-8")


def failed_condition(err: BaseException) -> bool:
    """Whether an S3 error is a condition that did not hold (412 PreconditionFailed, 409
    ConditionalRequestConflict when another conditional write was in flight, 404): s3fs turns
    these into plain OSErrors, with botocore's error as the cause."""
    cause = err.__cause__
    response = getattr(cause, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409")
