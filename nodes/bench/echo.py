"""The echo baseline's server: a bare gRPC server, built as the node builds its own.

Owns: :func:`build_server` (the one place that mirrors how ``nodes/node.py`` builds the node's
gRPC server: keep the two aligned when the node's serving stack changes), the two generic
bytes handlers, and ``python -m nodes.bench.echo --listen HOST:PORT``, which serves until
SIGTERM or SIGINT.

A request is an 8-byte header and a payload: the header says how many bytes to answer
(``reply_size``) in how many messages (``messages``; more than one for a streamed scan). The
payload is the serialized Shardless request the operation would send, and is not read. Replies
are zero bytes, cached per size. So an echo call costs what gRPC, HTTP/2 and Python's servicer
dispatch cost for messages of the real sizes, and nothing else: no parsing, no storage, no
locks. That is the ceiling a Shardless operation can reach on this serving stack.
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures

import grpc

from nodes.config import MAX_MESSAGE_BYTES, NodeConfig

SERVICE = "shardless.bench.Echo"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"
HEADER = struct.Struct("<II")
"""(reply_size, messages) at the start of every request."""

_replies: dict[int, bytes] = {}


def header(reply_size: int, messages: int = 1) -> bytes:
    """The header asking for ``reply_size`` bytes in ``messages`` messages."""
    return HEADER.pack(reply_size, messages)


def _reply(size: int) -> bytes:
    out = _replies.get(size)
    if out is None:
        out = bytes(size)
        if len(_replies) < 4096:
            _replies[size] = out
    return out


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    size, _ = HEADER.unpack_from(request)
    return _reply(size)


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    size, messages = HEADER.unpack_from(request)
    messages = max(1, messages)
    each = _reply(size // messages)
    for _ in range(messages):
        yield each


def build_server(max_workers: int = NodeConfig.max_workers) -> grpc.Server:
    """Build the echo server as ``nodes/node.py`` builds the node's server (not started).

    NB: mirrors ``Node.start``: ``grpc.server`` over a ``ThreadPoolExecutor`` of
    ``max_workers`` threads (the node's ``--workers`` default) and the node's channel options.
    Change both together.
    """
    opts = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0)]
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                 thread_name_prefix="rpc"), options=opts)
    srv.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    })])
    return srv


def main(argv: Sequence[str] | None = None) -> int:
    """Serve echo calls on ``--listen`` until SIGTERM or SIGINT."""
    p = argparse.ArgumentParser(prog="python -m nodes.bench.echo")
    p.add_argument("--listen", required=True, help="HOST:PORT")
    p.add_argument("--workers", type=int, default=NodeConfig.max_workers)
    args = p.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    srv = build_server(args.workers)
    try:
        srv.add_insecure_port(args.listen)
    except RuntimeError as e:
        print(f"echo: cannot listen on {args.listen}: {e}", file=sys.stderr)
        return 1
    srv.start()
    print(f"echo: serving on {args.listen}", flush=True)
    stop.wait()
    srv.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
