"""The backup commands: ``shardless backup``, ``archive``, ``restore`` and ``verify``.

Owns: their arguments, fetching what a backup holds from the nodes (a consistent copy with
``CopyVolume``, the log after it with ``ReadLog``), the progress shown, and putting a restored
volume in place. Does not own the files' formats, their checks or the restore plan
(``storage/backup.py``), replaying records (``WriteView.apply_stored``) or the volume check
(``storage/integrity.py``). docs/backup.md tells the whole story.

Invariants: a backup directory is whole only once its manifest is in place, written last and
atomically; an archive holds only whole, fsynced segments; a restored volume appears at
``VOLUME/lmdb`` only once whole (it is built in ``VOLUME/.restore``), as a new primary's copy
with a volume id of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgpack

from nodes.clientargs import add_client_args, client_credentials
from storage import (
    PRIMARY,
    Corrupt,
    Identity,
    StorageError,
    open_volume,
    open_volume_from_copy,
)
from storage import backup as fmt
from storage.integrity import check_volume

if TYPE_CHECKING:
    import grpc

    from shardless.credentials import Credentials
    from shardless.v1 import services_pb2 as api

# NB: grpc and the API's stubs are imported by the functions that call nodes (_net), not here:
# the local full backup (--volume), restore and verify never touch the network, and start
# without them (nodes/cli.py dispatches these commands with their parsers alone).

SubParsers = argparse._SubParsersAction  # type: ignore[type-arg]

SEGMENT_RECORDS = 100_000
SEGMENT_BYTES = 64 << 20
READ_BATCH = 2000
STALL_S = 5.0
RETRY_S = 1.0
HOLD_TTL_S, HOLD_RENEW_S = 60.0, 20.0  # the archive's retention hold (docs/changes.md)
APPLY_RECORDS = 5000
APPLY_BYTES = 32 << 20


def _net() -> tuple[Any, Any, Any, Any]:
    """grpc, the API's messages and stubs, and ``open_channel`` (imported on first use)."""
    import grpc

    from shardless.credentials import open_channel
    from shardless.v1 import services_pb2 as api
    from shardless.v1 import services_pb2_grpc as rpc

    return grpc, api, rpc, open_channel


def _is_gone(e: grpc.RpcError) -> bool:
    """Whether the node of ``e`` is gone (another may answer)."""
    grpc = _net()[0]
    return e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.CANCELLED)


class CommandError(Exception):
    """What the user is told, with exit status 1 (2 for ``needs_full``)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# -- arguments ---------------------------------------------------------------------------------


def add_commands(sub: SubParsers) -> None:
    """Register ``backup``, ``archive``, ``restore`` and ``verify``."""
    p = sub.add_parser("backup", help="an online backup: a consistent full copy, or the log "
                                      "after the last backup (--incremental)",
                       description="Back up a running cluster without stopping writes; see "
                                   "docs/backup.md.")
    p.add_argument("dest", help="the backup directory (new or empty for a full backup)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--connect",
                   help="node addresses, HOST:PORT[,HOST:PORT...] (another is tried when one "
                        "does not answer)")
    g.add_argument("--volume", metavar="VOLUME_DIR",
                   help="a full backup on the volume's own host, at disk speed: LMDB's own "
                        "consistent copy of VOLUME_DIR's data file (nodes go on writing)")
    p.add_argument("--cluster", default="shardless",
                   help="with --volume: the name of the cluster the volume serves, kept in "
                        "the manifest (incremental backups check it; default: shardless)")
    p.add_argument("--incremental", action="store_true",
                   help="add the log records after the last position DEST holds")
    p.add_argument("--no-progress", action="store_true", help="print no progress")
    add_client_args(p)
    p.set_defaults(func=_command(_run_backup))

    p = sub.add_parser("archive", help="follow the commit log into a directory of segments "
                                       "(continuous archiving)")
    p.add_argument("dir", help="the archive directory; resumed from what it holds")
    _connect_arg(p)
    p.add_argument("--from-position", type=int, default=0,
                   help="where an empty archive starts (0: the oldest position held)")
    p.add_argument("--until-position", type=int, default=0,
                   help="stop once this position is archived (0: follow until stopped)")
    p.add_argument("--segment-records", type=int, default=SEGMENT_RECORDS,
                   help="records per segment at most")
    p.add_argument("--hold", default="", metavar="NAME",
                   help="the retention hold that keeps the log for this archive (default: "
                        "archive-<digest of DIR>): moved on as segments are written, renewed "
                        "at least every 20 s with a 60 s TTL, so the log is kept for a "
                        "stopped archive for a minute")
    p.add_argument("--segment-seconds", type=float, default=10.0,
                   help="close a segment after this long (what a crash of the archive can "
                        "lose)")
    add_client_args(p)
    p.set_defaults(func=_command(_run_archive))

    p = sub.add_parser("restore", help="rebuild a volume from a backup (and archives) as of "
                                       "a position or a time")
    p.add_argument("src", help="the backup directory")
    p.add_argument("--volume", required=True, help="the new volume's directory (new or empty)")
    p.add_argument("--archive", action="append", default=[],
                   help="a log archive directory to take records from (repeatable)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--to-position", type=int, default=None,
                   help="the position to restore to (default: the last one on hand)")
    g.add_argument("--to-time", default=None,
                   help="restore every commit made at or before this time (Unix seconds or "
                        "ISO-8601)")
    p.add_argument("--map-size", type=int, default=None,
                   help="LMDB map size in bytes of the new volume")
    p.set_defaults(func=_command(_run_restore))

    p = sub.add_parser("verify", help="check a backup, an archive or a volume")
    p.add_argument("path", help="a backup or archive directory, or a volume directory")
    p.set_defaults(func=_command(_run_verify))


def _connect_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connect", required=True,
                   help="node addresses, HOST:PORT[,HOST:PORT...] (another is tried when one "
                        "does not answer)")


def _command(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def main(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except CommandError as e:
            print(f"shardless {args.command}: {e}", file=sys.stderr)
            return e.status
        except (Corrupt, StorageError, ValueError) as e:
            print(f"shardless {args.command}: {e}", file=sys.stderr)
            return 1
    return main


def _addresses(args: argparse.Namespace) -> list[str]:
    out = [a.strip() for a in args.connect.split(",") if a.strip()]
    if not out:
        raise CommandError("--connect needs at least one HOST:PORT")
    return out


def _credentials(args: argparse.Namespace) -> Credentials:
    return client_credentials(args)


# -- progress ----------------------------------------------------------------------------------


class Progress:
    """A progress bar (``rich`` when it is installed, a plain line on stderr otherwise)."""

    def __init__(self, what: str, *, enabled: bool = True, total: int | None = None) -> None:
        self._what, self._enabled, self._total = what, enabled, total
        self._bar: Any = None
        self._task: Any = None
        self._last = 0.0
        self._started = time.monotonic()
        if not enabled:
            return
        try:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )
            from rich.progress import Progress as Bar
        except ImportError:
            return
        self._bar = Bar(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeElapsedColumn(), transient=False)
        self._bar.start()
        self._task = self._bar.add_task(what, total=total)

    def update(self, done_bytes: int, note: str = "") -> None:
        """Show ``done_bytes`` done so far."""
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=done_bytes,
                             description=f"{self._what} {note}".rstrip())
            return
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            rate = done_bytes / max(now - self._started, 1e-6) / (1 << 20)
            print(f"\r{self._what}: {done_bytes / (1 << 20):.1f} MiB ({rate:.1f} MiB/s) {note}",
                  end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._enabled and self._last:
            print(file=sys.stderr)


# -- talking to the nodes ----------------------------------------------------------------------


def _status(addresses: Sequence[str], creds: Credentials) -> tuple[str, api.StatusResponse]:
    """The first node that answers, and its status."""
    grpc, api, rpc, open_channel = _net()
    errors = []
    for address in addresses:
        with open_channel(address, creds) as ch:
            try:
                return address, rpc.ClusterServiceStub(ch).Status(
                    api.StatusRequest(local_only=True), timeout=10)
            except grpc.RpcError as e:
                if not _is_gone(e):
                    raise CommandError(f"{address}: {e.code().name}: {e.details()}") from e
                errors.append(f"{address}: {e.code().name}")
    raise CommandError(f"no node answered ({', '.join(errors)})")


@contextlib.contextmanager
def _watchdog(stream: Any, stall_s: float) -> Iterator[Callable[[], None]]:
    """Cancel ``stream`` when the function yielded is not called for ``stall_s`` (a node
    frozen mid-stream must not hold the command forever)."""
    heard = [time.monotonic()]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            if time.monotonic() - heard[0] > stall_s:
                stream.cancel()
                return

    t = threading.Thread(target=watch, name="stream-watchdog", daemon=True)
    t.start()
    try:
        yield lambda: heard.__setitem__(0, time.monotonic())
    finally:
        done.set()


def _read_log(address: str, creds: Credentials, start: int, *, follow: bool,
              on_records: Callable[[list[tuple[int, bytes]], api.ReadLogResponse], bool]) -> None:
    """Stream the log from ``start`` from one node, passing each message's records on; stop
    when ``on_records`` returns False.

    Raises:
        grpc.RpcError: as the node ended the stream (OUT_OF_RANGE: ``start`` is gone).
    """
    _, api, rpc, open_channel = _net()
    with open_channel(address, creds) as ch:
        stream = rpc.ClusterServiceStub(ch).ReadLog(api.ReadLogRequest(
            start_position=start, follow=follow, batch_records=READ_BATCH))
        with _watchdog(stream, STALL_S) as heard:
            try:
                for msg in stream:
                    heard()
                    if not on_records([(r.position, r.data) for r in msg.records], msg):
                        return
            finally:
                stream.cancel()


def _needs_full(e: grpc.RpcError, held: int, what: str) -> CommandError:
    return CommandError(f"{e.details()}. {what} holds up to position {held} and the cluster's "
                        f"log no longer holds position {held + 1}: take a new full backup "
                        f"(shardless backup NEWDIR --connect ...)", status=2)


# -- backup ------------------------------------------------------------------------------------


def _run_backup(args: argparse.Namespace) -> int:
    if args.volume is not None:
        if args.incremental:
            raise CommandError("--incremental reads the log from the nodes: give --connect")
        return _local_full(args.dest, args.volume, args.cluster)
    addresses, creds = _addresses(args), _credentials(args)
    if args.incremental:
        return _incremental(args.dest, addresses, creds, progress=not args.no_progress)
    return _full(args.dest, addresses, creds, progress=not args.no_progress)


def _prepare_full(dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    if fmt.read_manifest(dest) is not None:
        raise CommandError(f"{dest} already holds a backup: add to it with --incremental, or "
                           f"give a new or empty directory")
    fmt.remove_partials(dest)
    left = [n for n in os.listdir(dest) if n != fmt.LOG_DIR or os.listdir(os.path.join(dest, n))]
    if left:
        raise CommandError(f"{dest} is not empty ({', '.join(sorted(left)[:5])}): give a new "
                           f"or empty directory")


def _full(dest: str, addresses: list[str], creds: Credentials, *, progress: bool) -> int:
    grpc = _net()[0]
    _prepare_full(dest)
    _, status = _status(addresses, creds)
    started = time.time()
    failures = []
    for attempt in range(2 * len(addresses)):
        address = addresses[attempt % len(addresses)]
        bar = Progress(f"backup from {address}", enabled=progress)
        try:
            info = _copy(dest, address, creds, bar, started)
        except grpc.RpcError as e:
            if not _is_gone(e):
                raise CommandError(f"{address}: {e.code().name}: {e.details()}") from e
            failures.append(f"{address}: {e.code().name}")
            time.sleep(RETRY_S)
            continue
        finally:
            bar.close()
        manifest = fmt.Manifest(status.cluster, status.primary_volume_id or status.volume_id,
                                time.time(), info)
        fmt.write_manifest(dest, manifest)
        print(f"full backup of cluster {manifest.cluster} at position {info.position}: "
              f"{info.items} items, {info.size / (1 << 20):.1f} MiB in "
              f"{time.time() - started:.1f} s ({dest})")
        return 0
    raise CommandError(f"the copy could not be taken ({'; '.join(failures)}); nothing was "
                       f"kept")


def _local_full(dest: str, volume_dir: str, cluster: str) -> int:
    """A full backup of the volume in ``volume_dir`` from this host: LMDB's copy of one
    snapshot, fsynced and checksummed (``fmt.write_lmdb_copy``), then the manifest."""
    if not os.path.isfile(os.path.join(volume_dir, "lmdb", "data.mdb")):
        raise CommandError(f"{volume_dir} holds no volume (no lmdb/data.mdb)")
    _prepare_full(dest)
    started = time.time()
    store = open_volume(volume_dir)
    try:
        with store.read() as view:
            identity = view.volume_identity()
        info = fmt.write_lmdb_copy(store, dest, started)
    finally:
        store.close()
    manifest = fmt.Manifest(cluster, identity.volume_id if identity else "", time.time(), info)
    fmt.write_manifest(dest, manifest)
    print(f"full backup of cluster {cluster} at position {info.position}: LMDB copy of "
          f"{info.size / (1 << 20):.1f} MiB in {time.time() - started:.1f} s ({dest})")
    return 0


def _copy(dest: str, address: str, creds: Credentials, bar: Progress, started: float
          ) -> fmt.CopyInfo:
    _, api, rpc, open_channel = _net()
    w = fmt.FramedWriter(os.path.join(dest, fmt.COPY_FILE), fmt.COPY_MAGIC)
    try:
        position, items, received = -1, 0, 0
        with open_channel(address, creds) as ch:
            stream = rpc.ClusterServiceStub(ch).CopyVolume(api.CopyVolumeRequest())
            with _watchdog(stream, STALL_S) as heard:
                for msg in stream:
                    heard()
                    position = msg.position
                    if msg.items:  # already MessagePack [[key, value], ...]: kept as sent
                        items += _array_length(msg.items)
                        w.add_packed(msg.items)
                    received += len(msg.items)
                    bar.update(received, f"at position {position}")
                    if msg.done:
                        break
                else:
                    raise CommandError(f"the copy from {address} ended before it was whole; "
                                       f"nothing was kept")
        sha, size = w.finish()
    except BaseException:
        w.abort()
        raise
    return fmt.CopyInfo(fmt.COPY_FILE, position, items, sha, size, started)


def _array_length(packed: bytes) -> int:
    """The length of the MessagePack array ``packed`` (read from its header only).

    Raises:
        Corrupt: it is not an array.
    """
    unpacker = msgpack.Unpacker()
    unpacker.feed(packed[:5])
    try:
        return int(unpacker.read_array_header())
    except (ValueError, msgpack.UnpackException) as e:
        raise Corrupt("a copy chunk is not a MessagePack array") from e


def _incremental(dest: str, addresses: list[str], creds: Credentials, *, progress: bool) -> int:
    grpc = _net()[0]
    manifest = fmt.read_manifest(dest)
    if manifest is None:
        raise CommandError(f"{dest} holds no backup (no {fmt.MANIFEST}): take a full one "
                           f"first (shardless backup {dest} --connect ...)")
    fmt.remove_partials(dest)
    _, status = _status(addresses, creds)
    if status.cluster != manifest.cluster:
        raise CommandError(f"{dest} is a backup of cluster {manifest.cluster}, these nodes are "
                           f"of {status.cluster}")
    held = manifest.position
    log_dir = os.path.join(dest, fmt.LOG_DIR)
    written: list[fmt.SegmentInfo] = []
    pending: list[tuple[int, bytes]] = []
    size = [0, 0]  # pending bytes, all bytes
    bar = Progress("incremental backup", enabled=progress)

    def flush() -> None:
        if pending:
            written.append(fmt.write_segment(log_dir, pending))
            pending.clear()
            size[0] = 0

    def take(got: list[tuple[int, bytes]], msg: api.ReadLogResponse) -> bool:
        for pos, raw in got:
            expected = (pending[-1][0] if pending else
                        written[-1].last if written else held) + 1
            if pos != expected:
                raise CommandError(f"the node sent position {pos} where {expected} was "
                                   f"expected")
            pending.append((pos, raw))
            size[0] += len(raw)
            size[1] += len(raw)
            if len(pending) >= SEGMENT_RECORDS or size[0] >= SEGMENT_BYTES:
                flush()
        bar.update(size[1], f"to position {msg.last_position}")
        return True

    try:
        for attempt in range(2 * len(addresses)):
            address = addresses[attempt % len(addresses)]
            start = (pending[-1][0] if pending else written[-1].last if written else held) + 1
            try:
                _read_log(address, creds, start, follow=False, on_records=take)
                break
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                    flush()
                    _save(dest, manifest, written)
                    raise _needs_full(e, start - 1, dest) from e
                if not _is_gone(e) or attempt == 2 * len(addresses) - 1:
                    raise CommandError(f"{address}: {e.code().name}: {e.details()}") from e
                time.sleep(RETRY_S)
        flush()
    finally:
        bar.close()
    if not written:
        print(f"{dest} is up to date at position {held}")
        return 0
    manifest = _save(dest, manifest, written)
    print(f"incremental backup: positions {held + 1}..{manifest.position} "
          f"({sum(s.records for s in written)} records, {len(written)} segment(s)) in {dest}")
    return 0


def _save(dest: str, manifest: fmt.Manifest, written: list[fmt.SegmentInfo]) -> fmt.Manifest:
    if written:
        manifest = manifest.with_segments(written, time.time())
        fmt.write_manifest(dest, manifest)
    return manifest


# -- archive -----------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _run_archive(args: argparse.Namespace) -> int:
    grpc, api, rpc, open_channel = _net()
    addresses, creds = _addresses(args), _credentials(args)
    directory = args.dir
    log_dir = os.path.join(directory, fmt.LOG_DIR)
    os.makedirs(log_dir, exist_ok=True)
    fmt.remove_partials(directory)
    segments = fmt.list_segments(directory)
    last = 0
    if segments:
        _, last, path = segments[-1]
        for _ in fmt.read_segment(path):  # the last one must be whole: it is where we resume
            pass
    start = last + 1 if segments else args.from_position
    print(f"archiving into {directory} from position {start or 'the oldest held'}",
          file=sys.stderr, flush=True)
    pending: list[tuple[int, bytes]] = []
    opened = [time.monotonic()]
    archived = [last]
    stopping = threading.Event()

    advanced = threading.Event()  # a segment was written: the hold may move on

    def flush() -> None:
        if pending:
            info = fmt.write_segment(log_dir, pending)
            archived[0] = info.last
            pending.clear()
            advanced.set()

    def reached() -> bool:
        held = pending[-1][0] if pending else archived[0]
        return bool(args.until_position) and held >= args.until_position

    def take(got: list[tuple[int, bytes]], msg: api.ReadLogResponse) -> bool:
        for pos, raw in got:
            prev = pending[-1][0] if pending else archived[0]
            if prev and pos != prev + 1:
                raise CommandError(f"the node sent position {pos} after {prev}")
            if not pending:
                opened[0] = time.monotonic()
            pending.append((pos, raw))
            if len(pending) >= args.segment_records:
                flush()
        if pending and time.monotonic() - opened[0] >= args.segment_seconds:
            flush()
        return not reached() and not stopping.is_set()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()

    hold = args.hold or "archive-" + hashlib.sha256(
        os.path.abspath(directory).encode()).hexdigest()[:12]

    def keep_hold() -> None:
        """Hold the log from the first position not archived yet (docs/changes.md)."""
        warned = False
        while True:
            advanced.clear()
            at = archived[0] + 1 if archived[0] else max(start, 1)
            for address in addresses:
                try:
                    with open_channel(address, creds) as ch:
                        rpc.ChangeServiceStub(ch).Hold(api.HoldRequest(
                            name=hold, position=at, ttl_seconds=HOLD_TTL_S), timeout=5)
                    break
                except grpc.RpcError as e:
                    if not warned:
                        print(f"archive: cannot hold the log ({address}: {e.code().name}); "
                              f"it is kept only by its bounds meanwhile", file=sys.stderr,
                              flush=True)
                        warned = True
            if stopping.wait(1.0):  # at most one renewal a second
                return
            advanced.wait(HOLD_RENEW_S - 1.0)
            if stopping.is_set():
                return

    threading.Thread(target=keep_hold, name="hold", daemon=True).start()
    old = signal.signal(signal.SIGTERM, on_signal)
    attempt = 0
    try:
        while not stopping.is_set():
            address = addresses[attempt % len(addresses)]
            held = pending[-1][0] if pending else archived[0]
            nxt = held + 1 if held else start
            try:
                _read_log(address, creds, nxt, follow=True, on_records=take)
                if reached():
                    break
                if not stopping.is_set():  # the node left (drained): read from another
                    print(f"archive: {address} ended the stream; reading from another node",
                          file=sys.stderr, flush=True)
                    attempt += 1
                    stopping.wait(RETRY_S)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                    flush()
                    raise _needs_full(e, nxt - 1, directory) from e
                if not _is_gone(e) and e.code() != grpc.StatusCode.UNKNOWN:
                    raise CommandError(f"{address}: {e.code().name}: {e.details()}") from e
                if stopping.is_set():
                    break
                print(f"archive: {address}: {e.code().name}; reading from another node",
                      file=sys.stderr, flush=True)
                attempt += 1
                flush()
                stopping.wait(RETRY_S)
    except KeyboardInterrupt:
        pass
    finally:
        flush()
        stopping.set()  # the hold is not renewed any more: it ends with its TTL
        signal.signal(signal.SIGTERM, old)
    print(f"archive {directory} holds up to position {archived[0]}", file=sys.stderr)
    return 0


# -- restore -----------------------------------------------------------------------------------


def parse_time(text: str) -> float:
    """Unix seconds from ``text``: a number, or ISO-8601 (local time when it has no zone).

    Raises:
        ValueError: neither.
    """
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"--to-time {text!r} is neither Unix seconds nor ISO-8601") from None


def _run_restore(args: argparse.Namespace) -> int:
    to_time = None if args.to_time is None else parse_time(args.to_time)
    t0 = time.monotonic()
    result = restore(args.src, args.volume, archives=args.archive, to_position=args.to_position,
                     to_time=to_time, map_size=args.map_size)
    print(f"restored {args.volume} to position {result.position} ({result.records} records "
          f"replayed after the full copy at {result.copy_position}) in "
          f"{time.monotonic() - t0:.1f} s: a new primary volume {result.volume_id}. Serve it "
          f"with a node of a new cluster (a new --cluster name or a fresh etcd): shardless "
          f"node --volume {args.volume} --cluster NAME ...")
    return 0


class Restored:
    """What :func:`restore` did."""

    def __init__(self, position: int, copy_position: int, records: int, volume_id: str) -> None:
        self.position, self.copy_position = position, copy_position
        self.records, self.volume_id = records, volume_id


def restore(src: str, volume_dir: str, *, archives: Sequence[str] = (),
            to_position: int | None = None, to_time: float | None = None,
            map_size: int | None = None) -> Restored:
    """Build a volume in ``volume_dir`` from the backup ``src`` (and ``archives``) as of
    ``to_position`` or ``to_time`` (neither: the last position on hand).

    Raises:
        CommandError: what is missing or in the way. Corrupt: a damaged file.
    """
    manifest = fmt.read_manifest(src)
    if manifest is None:
        raise CommandError(f"{src} holds no whole backup (no {fmt.MANIFEST}); a backup cut "
                           f"short has none")
    copy = manifest.copy
    copy_path = os.path.join(src, copy.name)
    sha, size = fmt.file_checksum(copy_path, copy.chunk_bytes)
    if (sha, size) != (copy.sha256, copy.size):
        raise CommandError(f"{copy_path} does not match the manifest (damaged): shardless "
                           f"verify {src}")
    if to_position is not None and to_position < copy.position:
        raise CommandError(f"the full copy in {src} is at position {copy.position}, after "
                           f"{to_position}: restore from a full backup taken before it")
    if to_time is not None and copy.taken_at > to_time:
        raise CommandError(f"the full copy in {src} was taken at "
                           f"{_when(copy.taken_at)}, after {_when(to_time)}: restore from a "
                           f"full backup taken before it")
    segments = fmt.list_segments(src)
    for a in archives:
        got = fmt.list_segments(a)
        if not got and not os.path.isdir(a):
            raise CommandError(f"archive {a} does not exist")
        segments.extend(got)
    try:
        the_plan = fmt.plan(copy.position, segments, to_position)
    except fmt.Gap as e:
        raise CommandError(f"cannot restore to position {to_position}: {e}") from e
    if os.path.isdir(volume_dir) and os.listdir(volume_dir):
        raise CommandError(f"{volume_dir} is not empty: restore into a new or empty directory")
    staging = os.path.join(volume_dir, ".restore")
    os.makedirs(staging)
    try:
        position, records, volume_id = _build(staging, copy_path, copy.kind, copy.position,
                                              the_plan, to_time, map_size)
        os.replace(os.path.join(staging, "lmdb"), os.path.join(volume_dir, "lmdb"))
        fmt.fsync_dir(volume_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Restored(position, copy.position, records, volume_id)


def _build(staging: str, copy_path: str, kind: str, copy_position: int, the_plan: fmt.Plan,
           to_time: float | None, map_size: int | None) -> tuple[int, int, str]:
    from storage import commitlog

    sized = {} if map_size is None else {"map_size": map_size}
    if kind == fmt.LMDB_KIND:
        store = open_volume_from_copy(copy_path, staging, **sized)
    else:
        store = open_volume(staging, **sized)
    try:
        if kind == fmt.LMDB_KIND:  # the whole copied volume: keep what a copy takes
            store.transact(lambda view: view.keep_replicated_only(copy_position))
        else:
            for chunk in fmt.read_copy(copy_path):
                with store.write() as view:
                    view.load_copy(chunk)
            with store.write() as view:
                view.restart_log_at(copy_position)
        position, records, last_ts = copy_position, 0, 0.0
        batch: list[tuple[int, bytes]] = []
        batch_bytes = 0
        reached = to_time is None
        for pos, raw in fmt.records(the_plan.steps):
            if to_time is not None:
                ts = commitlog.header(raw)[0]
                if ts > to_time:
                    reached = True
                    break
                last_ts = ts
            batch.append((pos, raw))
            batch_bytes += len(raw)
            if len(batch) >= APPLY_RECORDS or batch_bytes >= APPLY_BYTES:
                _apply(store, batch)
                records += len(batch)
                position = batch[-1][0]
                batch, batch_bytes = [], 0
        if batch:
            _apply(store, batch)
            records += len(batch)
            position = batch[-1][0]
        if not reached:
            why = (the_plan.gap if the_plan.gap else
                   f"the records on hand end at position {position}"
                   f"{f' (committed at {_when(last_ts)})' if last_ts else ''}")
            raise CommandError(f"cannot restore to {_when(to_time or 0)}: {why}; later "
                               f"commits may exist (restore without --to-time to take "
                               f"everything on hand)")
        identity = Identity.new(PRIMARY)
        store.transact(lambda view: view.set_volume_identity(identity))
    finally:
        store.close()
    return position, records, identity.volume_id


def _apply(store: Any, batch: list[tuple[int, bytes]]) -> None:
    with store.write() as view:
        for pos, raw in batch:
            view.apply_stored(pos, raw)


def _when(ts: float) -> str:
    return f"{datetime.fromtimestamp(ts).isoformat(timespec='milliseconds')} ({ts:.3f})"


# -- verify ------------------------------------------------------------------------------------


def _run_verify(args: argparse.Namespace) -> int:
    path = args.path
    if os.path.isfile(os.path.join(path, "lmdb", "data.mdb")):
        store = open_volume(path)
        try:
            report = check_volume(store)
        finally:
            store.close()
        for p in report.problems:
            print(f"problem: {p}")
        print(f"volume {path}: {report.tables} table(s), {report.rows} row(s), commit log "
              f"{report.log_first}..{report.log_last} ({report.records} records): "
              f"{'OK' if not report.problems else f'{len(report.problems)} problem(s)'}")
        return 1 if report.problems else 0
    if not os.path.isdir(path):
        raise CommandError(f"{path} does not exist")
    problems, notes = fmt.verify_dir(path)
    for n in notes:
        print(f"note: {n}")
    for p in problems:
        print(f"problem: {p}")
    manifest = None
    with contextlib.suppress(Corrupt):
        manifest = fmt.read_manifest(path)
    segs = fmt.list_segments(path)
    what = (f"backup at position {manifest.position} (full copy at {manifest.copy.position}, "
            f"{len(manifest.segments)} segment(s))" if manifest is not None else
            f"archive of {len(segs)} segment(s)"
            + (f", positions {segs[0][0]}..{segs[-1][1]}" if segs else ""))
    print(f"{path}: {what}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0
