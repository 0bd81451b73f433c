"""Backups on disk: the full copy, the log segments, the manifest, and how they are checked.

Owns: the file formats of a backup directory and of a log archive, writing them durably and
atomically, reading them back with every check, the restore plan (which records, from which
files, in position order, refusing a gap) and :func:`verify_dir`. Does not own how the bytes
are fetched (``nodes/backup.py`` reads ``CopyVolume`` and ``ReadLog``) nor replaying them
(``WriteView.load_copy`` and ``WriteView.apply_stored``).

Layout (docs/backup.md)::

    DEST/manifest.json               what the backup holds; written last, atomically
    DEST/base.copy                   the full copy: the replicated key space at a position
    DEST/log/<first>-<last>.seg      log records first..last (20-digit positions)
    ARCHIVE/log/<first>-<last>.seg   the same, written by ``shardless archive`` (no manifest)

Both kinds of data file are framed the same way: an 8-byte magic, a body that is a stream of
MessagePack objects, and the SHA-256 of magic and body (32 bytes), so a file checks itself even
without a manifest. A copy's body is chunks ``[[key, value], ...]``; a segment's body is records
``[position, stored bytes]`` (the record as ``storage/commitlog.py`` keeps it), consecutive.

Invariant: a name without ``.partial`` is a whole file: every file is written as
``NAME.partial``, flushed and fsynced, then renamed and its directory fsynced. A backup is whole
only once its manifest is in place (the manifest is renamed over last), so a backup cut short
is never mistaken for a whole one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

import msgpack

from storage import commitlog, keys
from storage.errors import Corrupt, StorageError
from storage.integrity import check_volume
from storage.store import Store, open_copy

FORMAT = 1
FORMAT_LMDB = 2
FORMAT_LMDB_CHUNKED = 3
"""The manifest's format: 1 with a logical copy, 2 with an LMDB copy (which a reader of format
1 only would take for a logical copy and fail on), 3 with an LMDB copy whose checksum is
chunked (``CopyInfo.chunk_bytes``; a reader of format 2 only would call the copy damaged)."""
FORMATS = (FORMAT, FORMAT_LMDB, FORMAT_LMDB_CHUNKED)
MANIFEST = "manifest.json"
LOG_DIR = "log"
PARTIAL = ".partial"
COPY_MAGIC = b"SHDLCPY1"
SEGMENT_MAGIC = b"SHDLSEG1"
_DIGEST = 32
_READ_BYTES = 1 << 20
CHUNK_BYTES = 4 << 20
"""The piece of an LMDB copy that one SHA-256 covers (the chunked checksum, format 3)."""
HASH_THREADS = 2
"""Threads hashing a copy's pieces: the copy and the hashing of a 2-core host each have one
core (docs/benchmarks.md, 'Backup and restore': measured, 2 beat 1 and 3)."""
_SEGMENT_NAME = re.compile(r"^(\d{20})-(\d{20})\.seg$")


class Gap(StorageError):
    """The records on hand do not reach a position without a hole: find the missing segment,
    or restore to a position before the gap."""


# -- files -------------------------------------------------------------------------------------


def fsync_dir(path: str) -> None:
    """Make a rename or a new file in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one."""
    tmp = path + PARTIAL
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


class FramedWriter:
    """A framed file (magic, MessagePack objects, SHA-256) written as ``path.partial`` and put
    in place by :meth:`finish`; :meth:`abort` removes it."""

    def __init__(self, path: str, magic: bytes) -> None:
        self.path = path
        self._f: IO[bytes] = open(path + PARTIAL, "wb")  # noqa: SIM115 (closed in finish/abort)
        self._inner = hashlib.sha256()
        self.size = 0
        self._write(magic)

    def _write(self, data: bytes) -> None:
        self._f.write(data)
        self._inner.update(data)
        self.size += len(data)

    def add(self, obj: Any) -> None:
        """Append one MessagePack object."""
        self._write(msgpack.packb(obj, use_bin_type=True))

    def add_packed(self, data: bytes) -> None:
        """Append one object already packed (the caller vouches that it is one object)."""
        self._write(data)

    def finish(self) -> tuple[str, int]:
        """Write the checksum, fsync, rename into place; return the file's SHA-256 (hex) and
        size."""
        digest = self._inner.digest()
        self._f.write(digest)
        outer = self._inner.copy()
        outer.update(digest)
        self.size += len(digest)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.path + PARTIAL, self.path)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        return outer.hexdigest(), self.size

    def abort(self) -> None:
        """Close and remove the partial file."""
        self._f.close()
        try:
            os.unlink(self.path + PARTIAL)
        except FileNotFoundError:
            pass


def read_framed(path: str, magic: bytes) -> Iterator[Any]:
    """The MessagePack objects of a framed file, checking its magic, its framing and, once the
    last object is read, its SHA-256.

    Raises:
        Corrupt: a bad magic, a truncated file, a bad object or a checksum mismatch.
    """
    try:
        size = os.path.getsize(path)
        f = open(path, "rb")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise Corrupt(f"{path}: cannot be read ({e})") from e
    with f:
        if size < len(magic) + _DIGEST:
            raise Corrupt(f"{path}: truncated ({size} bytes)")
        head = f.read(len(magic))
        if head != magic:
            raise Corrupt(f"{path}: not a {magic[:7].decode()} file (magic {head!r})")
        h = hashlib.sha256(head)
        left = size - len(magic) - _DIGEST
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=0)
        try:
            while left:
                chunk = f.read(min(_READ_BYTES, left))
                if not chunk:
                    raise Corrupt(f"{path}: truncated")
                left -= len(chunk)
                h.update(chunk)
                unpacker.feed(chunk)
                yield from unpacker
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise Corrupt(f"{path}: undecodable content ({e})") from e
        if unpacker.tell() != size - len(magic) - _DIGEST:
            raise Corrupt(f"{path}: ends inside an object")
        if f.read(_DIGEST) != h.digest():
            raise Corrupt(f"{path}: checksum mismatch (the file is damaged)")


def file_sha256(path: str) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ_BYTES):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def chunked_sha256(digests: Sequence[bytes]) -> str:
    """The chunked checksum from the SHA-256 digests of a file's pieces, in order: the SHA-256
    (hex) of their concatenation (Dropbox's content hash is built the same way)."""
    return hashlib.sha256(b"".join(digests)).hexdigest()


class ChunkHasher:
    """The chunked checksum of the file ``path`` (the SHA-256 of each ``chunk_bytes`` piece,
    :func:`chunked_sha256` of them), taken by ``threads`` threads while the file is written,
    following its length: a piece is hashed once the file reaches its end, the last one once
    :meth:`finish` says the file is whole. ``writeback``: each piece hashed is handed to the
    kernel's writeback at once (``POSIX_FADV_DONTNEED``, which also drops its clean pages from
    the page cache), so that the writer's fsync finds little left to write. hashlib and reads
    release the GIL: the threads run beside the writer.

    NB: sound only for a writer that writes each byte once, in file order (as LMDB's copy
    does; a retry starts over from an empty file: :meth:`restart`). Were a byte written
    again after it was hashed, the checksum would not match the file, and verify and restore
    would refuse the copy as damaged: never a silent wrong copy.
    """

    def __init__(self, path: str, *, chunk_bytes: int = CHUNK_BYTES,
                 threads: int = HASH_THREADS, writeback: bool = False) -> None:
        self.path, self.chunk_bytes, self._threads = path, chunk_bytes, threads
        self._writeback = writeback
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._whole = threading.Event()
        self._stop = threading.Event()
        self._fd = -1
        self._next = 0
        self._digests: dict[int, bytes] = {}
        self._error: BaseException | None = None

    def restart(self) -> None:
        """Start (or start over, the file empty again) hashing the file."""
        self._halt()
        self._stop, self._whole = threading.Event(), threading.Event()
        self._next, self._digests, self._error = 0, {}, None
        self._fd = os.open(self.path, os.O_RDONLY)
        self._workers = [threading.Thread(target=self._work, name=f"hash-{n}", daemon=True,
                                          args=(self._fd, self._stop, self._whole))
                         for n in range(self._threads)]
        for t in self._workers:
            t.start()

    def finish(self) -> tuple[str, int]:
        """Say the file is whole; wait for the last pieces; return its checksum and size.

        Raises:
            OSError: the file could not be read.
        """
        if not self._workers:
            self.restart()
        self._whole.set()
        for t in self._workers:
            t.join()
        try:
            if self._error is not None:
                raise self._error
            size = os.fstat(self._fd).st_size
        finally:
            self._halt()
        n = -(-size // self.chunk_bytes)
        assert sorted(self._digests) == list(range(n)), "a piece of the copy was not hashed"
        return chunked_sha256([self._digests[i] for i in range(n)]), size

    def close(self) -> None:
        """Stop hashing (the file is abandoned)."""
        self._halt()

    def _halt(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join()
        self._workers = []
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _work(self, fd: int, stop: threading.Event, whole: threading.Event) -> None:
        buf = memoryview(bytearray(_READ_BYTES))
        try:
            while not stop.is_set():
                with self._lock:
                    i, self._next = self._next, self._next + 1
                start = i * self.chunk_bytes
                end = start + self.chunk_bytes
                while True:  # until the file reaches the piece's end, or is whole
                    is_whole = whole.is_set()  # before the length: then it is the final one
                    size = os.fstat(fd).st_size
                    if size >= end or is_whole:
                        end = min(end, size)
                        break
                    if stop.wait(0.001):
                        return
                if start >= end:
                    return
                h = hashlib.sha256()
                at = start
                while at < end:
                    got = os.preadv(fd, [buf[:min(_READ_BYTES, end - at)]], at)
                    if not got:
                        raise OSError(f"{self.path}: shorter than its length while hashed")
                    h.update(buf[:got])
                    at += got
                if self._writeback:
                    os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
                with self._lock:
                    self._digests[i] = h.digest()
        except BaseException as e:  # reported by finish
            self._error = e


def file_checksum(path: str, chunk_bytes: int) -> tuple[str, int]:
    """The checksum of a whole file as a manifest keeps it, and its size: the SHA-256 of the
    file (``chunk_bytes`` 0) or the chunked checksum (pieces hashed in parallel)."""
    if not chunk_bytes:
        return file_sha256(path)
    return ChunkHasher(path, chunk_bytes=chunk_bytes).finish()


# -- the full copy -----------------------------------------------------------------------------


COPY_FILE = "base.copy"
"""File name of the full copy in a backup directory (its position is in the manifest)."""


def read_copy(path: str) -> Iterator[list[tuple[bytes, bytes]]]:
    """The chunks of a full copy, each a list of (key, value) of the replicated key space.

    Raises:
        Corrupt: the file is damaged, or an item is not of the replicated key space.
    """
    for chunk in read_framed(path, COPY_MAGIC):
        try:
            pairs = [(bytes(k), bytes(v)) for k, v in chunk]
        except (TypeError, ValueError) as e:
            raise Corrupt(f"{path}: a chunk is not a list of [key, value]") from e
        for k, _ in pairs:
            if not keys.is_replicated(k):
                raise Corrupt(f"{path}: an item is outside the replicated key space")
        yield pairs


LMDB_FILE = "base.mdb"
"""File name of a full copy made by LMDB itself (``shardless backup --volume``)."""
COPY_KIND = "copy"
"""A logical copy: the replicated key space, framed (``base.copy``)."""
LMDB_KIND = "lmdb"
"""An LMDB data file: the whole volume, every kind of key, as ``Store.copy_to`` made it."""


def write_lmdb_copy(store: Store, directory: str, taken_at: float, *,
                    chunk_bytes: int = CHUNK_BYTES) -> CopyInfo:
    """Copy the volume of ``store`` (opened on this host) into ``directory`` as an LMDB data
    file at the engine's speed (``Store.copy_to``: one snapshot, writes go on), fsynced, its
    chunked checksum taken while it is written (:class:`ChunkHasher`), then renamed into place
    durably; return what it holds, for the manifest.

    Raises:
        StorageError: the copy failed; nothing is left but possibly a ``.partial`` file.
    """
    path = os.path.join(directory, LMDB_FILE)
    partial = path + PARTIAL
    if os.path.exists(partial):
        os.unlink(partial)
    hasher = ChunkHasher(partial, chunk_bytes=chunk_bytes, writeback=True)
    try:
        position = store.copy_to(partial, on_attempt=hasher.restart)
        sha, size = hasher.finish()
    except BaseException:
        hasher.close()
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    os.replace(partial, path)
    fsync_dir(directory)
    return CopyInfo(LMDB_FILE, position, 0, sha, size, taken_at, LMDB_KIND, chunk_bytes)


def check_lmdb_copy(path: str, position: int) -> list[str]:
    """Check an LMDB copy (its checksum known good): the volume checks of
    ``storage/integrity.py`` on it, and that it is at ``position``; return the problems."""
    name = os.path.basename(path)
    try:
        copy = open_copy(path)
    except StorageError as e:
        return [f"{name}: {e}"]
    try:
        with copy.read() as view:
            held = view.commit_position()
        report = check_volume(copy)
    except (StorageError, ValueError) as e:
        return [f"{name}: {e}"]
    finally:
        copy.close()
    problems = [f"{name}: {p}" for p in report.problems]
    if held != position:
        problems.append(f"{name}: at position {held}, the manifest says {position}")
    return problems


# -- log segments ------------------------------------------------------------------------------


def segment_name(first: int, last: int) -> str:
    """File name of the segment holding positions ``first..last``."""
    return f"{first:020d}-{last:020d}.seg"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """The (first, last) positions a segment's file name says, or None if not a segment."""
    m = _SEGMENT_NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class SegmentInfo:
    """What one segment holds (written into the manifest of a backup)."""

    name: str
    first: int
    last: int
    first_ts: float
    last_ts: float
    sha256: str
    size: int

    @property
    def records(self) -> int:
        return self.last - self.first + 1


def write_segment(directory: str, records: Sequence[tuple[int, bytes]]) -> SegmentInfo:
    """Write ``records`` (consecutive (position, stored bytes)) as one durable segment file in
    ``directory``; return what it holds.

    Raises:
        Gap: the positions are not consecutive.
        Corrupt: a record does not decode.
    """
    if not records:
        raise ValueError("a segment holds at least one record")
    for (a, _), (b, _) in itertools.pairwise(records):
        if b != a + 1:
            raise Gap(f"records to archive jump from position {a} to {b}")
    first, last = records[0][0], records[-1][0]
    first_ts = commitlog.header(records[0][1])[0]
    last_ts = commitlog.header(records[-1][1])[0]
    os.makedirs(directory, exist_ok=True)
    w = FramedWriter(os.path.join(directory, segment_name(first, last)), SEGMENT_MAGIC)
    try:
        for pos, raw in records:
            w.add([pos, raw])
        sha, size = w.finish()
    except BaseException:
        w.abort()
        raise
    return SegmentInfo(segment_name(first, last), first, last, first_ts, last_ts, sha, size)


def read_segment(path: str, *, decode: bool = False) -> Iterator[tuple[int, bytes]]:
    """The records of a segment file, (position, stored bytes), checked to be consecutive and
    to match the file's name; ``decode``: each record is also decoded (and must carry ops).

    Raises:
        Corrupt: the file is damaged, a record is undecodable, or the positions are wrong.
    """
    named = parse_segment_name(os.path.basename(path))
    expected = named[0] if named else None
    last = None
    for obj in read_framed(path, SEGMENT_MAGIC):
        try:
            pos, raw = int(obj[0]), bytes(obj[1])
        except (TypeError, ValueError, IndexError, KeyError) as e:
            raise Corrupt(f"{path}: an entry is not [position, record]") from e
        if expected is not None and pos != expected:
            raise Corrupt(f"{path}: position {pos} where {expected} was expected")
        if decode:
            try:
                record = commitlog.decode(keys.log(pos), raw)
            except Corrupt as e:
                raise Corrupt(f"{path}: {e}") from e
            if record.ops is None:
                raise Corrupt(f"{path}: record {pos} has no replay ops")
        expected, last = pos + 1, pos
        yield pos, raw
    if named and last != named[1]:
        raise Corrupt(f"{path}: ends at position {last}, its name says {named[1]}")


def list_segments(directory: str) -> list[tuple[int, int, str]]:
    """The segment files of ``directory/log``, (first, last, path), by first position."""
    d = os.path.join(directory, LOG_DIR)
    if not os.path.isdir(d):
        return []
    out = []
    for name in os.listdir(d):
        named = parse_segment_name(name)
        if named:
            out.append((named[0], named[1], os.path.join(d, name)))
    return sorted(out)


def remove_partials(directory: str) -> list[str]:
    """Remove the ``.partial`` files left in ``directory`` and its ``log`` by a writer cut
    short; return their names."""
    gone = []
    for d in (directory, os.path.join(directory, LOG_DIR)):
        if os.path.isdir(d):
            for name in os.listdir(d):
                if name.endswith(PARTIAL):
                    os.unlink(os.path.join(d, name))
                    gone.append(name)
    return gone


# -- the manifest ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyInfo:
    """The full copy a backup rests on."""

    name: str
    position: int
    items: int
    """Items of a logical copy; 0 for an LMDB copy (its keys are not counted)."""
    sha256: str
    size: int
    taken_at: float
    kind: str = COPY_KIND
    """``copy`` (logical, framed) or ``lmdb`` (an LMDB data file)."""
    chunk_bytes: int = 0
    """0: ``sha256`` is the file's SHA-256; else it is the chunked checksum of pieces of this
    many bytes (:func:`chunked_sha256`; LMDB copies from format 3)."""


@dataclass(frozen=True)
class Manifest:
    """What a backup directory holds: a full copy at ``copy.position`` and the log segments
    after it (incremental backups)."""

    cluster: str
    volume_id: str
    created_at: float
    copy: CopyInfo
    segments: tuple[SegmentInfo, ...] = ()
    format: int = FORMAT
    updated_at: float = field(default=0.0)

    def __post_init__(self) -> None:
        # The format follows from the copy's kind and checksum (FORMAT_LMDB_CHUNKED).
        object.__setattr__(self, "format", FORMAT if self.copy.kind == COPY_KIND else
                           FORMAT_LMDB_CHUNKED if self.copy.chunk_bytes else FORMAT_LMDB)

    @property
    def position(self) -> int:
        """The last position the backup holds."""
        return max([self.copy.position, *(s.last for s in self.segments)])

    def with_segments(self, more: Iterable[SegmentInfo], now: float) -> Manifest:
        return Manifest(self.cluster, self.volume_id, self.created_at, self.copy,
                        (*self.segments, *more), self.format, now)

    def encode(self) -> bytes:
        d = asdict(self)
        d["position"] = self.position
        if self.copy.kind == COPY_KIND:  # as format 1 wrote it: older readers read it
            del d["copy"]["kind"]
        if not self.copy.chunk_bytes:  # as formats 1 and 2 wrote it
            del d["copy"]["chunk_bytes"]
        return (json.dumps(d, indent=1, sort_keys=True) + "\n").encode()

    @staticmethod
    def decode(data: bytes) -> Manifest:
        """
        Raises:
            Corrupt: it is not a manifest of a format this version reads.
        """
        try:
            d = json.loads(data)
            if d.get("format") not in FORMATS:
                raise Corrupt(f"manifest format {d.get('format')!r}; this version reads "
                              f"{' and '.join(map(str, FORMATS))}")
            copy = CopyInfo(**d["copy"])
            if copy.kind not in (COPY_KIND, LMDB_KIND):
                raise Corrupt(f"the manifest's copy is of an unknown kind {copy.kind!r}")
            expected = (FORMAT if copy.kind == COPY_KIND else
                        FORMAT_LMDB_CHUNKED if copy.chunk_bytes else FORMAT_LMDB)
            if d["format"] != expected or copy.chunk_bytes < 0:
                raise Corrupt(f"a manifest of format {d['format']} with a copy of kind "
                              f"{copy.kind!r} and chunk_bytes {copy.chunk_bytes}")
            return Manifest(str(d["cluster"]), str(d["volume_id"]), float(d["created_at"]),
                            copy,
                            tuple(SegmentInfo(**s) for s in d["segments"]),
                            int(d["format"]), float(d.get("updated_at", 0.0)))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise Corrupt(f"the manifest does not decode: {e}") from e


def read_manifest(directory: str) -> Manifest | None:
    """The manifest of a backup directory, or None if it has none.

    Raises:
        Corrupt: it does not decode.
    """
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return Manifest.decode(data)


def write_manifest(directory: str, manifest: Manifest) -> None:
    """Put ``manifest`` in place atomically (the step that makes a backup whole)."""
    write_atomic(os.path.join(directory, MANIFEST), manifest.encode())


# -- restore plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """Read positions ``start..end`` of one segment file."""

    path: str
    start: int
    end: int


@dataclass(frozen=True)
class Plan:
    """The segments to read, in order, and why they stop: ``gap`` describes the first hole
    after them ("" when the records on hand simply end there)."""

    steps: tuple[Step, ...]
    end: int
    gap: str = ""


def plan(position: int, segments: Iterable[tuple[int, int, str]], target: int | None) -> Plan:
    """Which segments to read, in order, to go from a copy at ``position`` to ``target`` (None:
    as far as the segments reach without a gap). Segments may overlap (an archive and
    incremental backups of one log); positions at or before ``position`` are skipped.

    Raises:
        Gap: with a ``target``: a position up to it is in no segment, or it is beyond the last.
    """
    steps: list[Step] = []
    need = position + 1
    pending = sorted(segments)
    while target is None or need <= target:
        best = None
        for first, last, path in pending:
            if first <= need <= last and (best is None or last > best[1]):
                best = (first, last, path)
        if best is None:
            later = [s for s in pending if s[0] > need]
            if later:
                gap = (f"position {need} is in no segment: the records after {need - 1} "
                       f"resume at {later[0][0]} ({os.path.basename(later[0][2])}); "
                       f"positions {need}..{later[0][0] - 1} are missing")
            else:
                gap = ""
            if target is not None:
                raise Gap(gap or f"the records on hand end at position {need - 1}; position "
                                 f"{target} is not reached")
            return Plan(tuple(steps), need - 1, gap)
        end = best[1] if target is None else min(best[1], target)
        steps.append(Step(best[2], need, end))
        need = end + 1
    return Plan(tuple(steps), need - 1)


def records(steps: Iterable[Step]) -> Iterator[tuple[int, bytes]]:
    """The records of a plan, (position, stored bytes), in position order.

    Raises:
        Corrupt: a segment is damaged.
    """
    for step in steps:
        for pos, raw in read_segment(step.path):
            if pos > step.end:
                break
            if pos >= step.start:
                yield pos, raw


# -- verify ------------------------------------------------------------------------------------


def verify_dir(directory: str) -> tuple[list[str], list[str]]:
    """Check a backup directory (with a manifest) or a log archive (segments only): every file's
    checksum and size, the full copy and every record decode, the segments are gap-free and
    continue the full copy; return (problems, notes). No problem: the directory is whole.
    """
    problems: list[str] = []
    notes: list[str] = []
    try:
        manifest = read_manifest(directory)
    except Corrupt as e:
        return [str(e)], notes
    segments = list_segments(directory)
    on_disk = {os.path.basename(p) for _, _, p in segments}
    start: int | None = None
    if manifest is None:
        if not segments:
            return [f"{directory} has no {MANIFEST} and no log segments: not a backup (a "
                    f"backup cut short leaves no manifest)"], notes
        notes.append("no manifest: checked as a log archive")
    else:
        start = manifest.copy.position
        path = os.path.join(directory, manifest.copy.name)
        if manifest.copy.kind == LMDB_KIND:
            if _check_file(path, manifest.copy.sha256, manifest.copy.size, problems,
                           manifest.copy.chunk_bytes):
                problems.extend(check_lmdb_copy(path, manifest.copy.position))
        elif _check_file(path, manifest.copy.sha256, manifest.copy.size, problems):
            try:
                n = sum(len(chunk) for chunk in read_copy(path))
                if n != manifest.copy.items:
                    problems.append(f"{manifest.copy.name}: {n} items, the manifest says "
                                    f"{manifest.copy.items}")
            except Corrupt as e:
                problems.append(str(e))
        listed = {s.name for s in manifest.segments}
        for s in manifest.segments:
            p = os.path.join(directory, LOG_DIR, s.name)
            if s.name not in on_disk:
                problems.append(f"segment {s.name} (positions {s.first}..{s.last}) is in the "
                                f"manifest but missing")
                continue
            _check_file(p, s.sha256, s.size, problems)
        for name in sorted(on_disk - listed):
            notes.append(f"{LOG_DIR}/{name} is not in the manifest (an incremental backup cut "
                         f"short?); checked, not counted")
        segments = [s for s in segments if os.path.basename(s[2]) in listed]
    for _, _, p in segments:
        try:
            for _ in read_segment(p, decode=True):
                pass
        except Corrupt as e:
            problems.append(str(e))
    expect = None if start is None else start + 1
    for first, last, p in segments:
        if expect is not None and first > expect:
            problems.append(f"gap: positions {expect}..{first - 1} are in no segment (the next, "
                            f"{os.path.basename(p)}, starts at {first})")
        expect = max(expect or 0, last + 1)
    if manifest is not None and segments:
        expect_last = manifest.position
        if expect is not None and expect - 1 != expect_last:
            problems.append(f"the segments end at {expect - 1}, the manifest says "
                            f"{expect_last}")
    return problems, notes


def _check_file(path: str, sha256: str, size: int, problems: list[str],
                chunk_bytes: int = 0) -> bool:
    name = os.path.basename(path)
    if not os.path.isfile(path):
        problems.append(f"{name} is in the manifest but missing")
        return False
    got_sha, got_size = file_checksum(path, chunk_bytes)
    if got_size != size:
        problems.append(f"{name}: {got_size} bytes, the manifest says {size}")
        return False
    if got_sha != sha256:
        problems.append(f"{name}: SHA-256 mismatch (the file is damaged)")
        return False
    return True
