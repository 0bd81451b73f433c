"""Shardless's Python client: :func:`connect` and the value helpers.

The API contract and its generated stubs live in :mod:`shardless.v1`; :mod:`shardless.client`
holds the helper itself (see its docstring for what it does and does not do, notably which calls
it retries and that errors are the stubs' ``grpc.RpcError``).
"""

from shardless.client import (
    ChangeEvent,
    Client,
    Condition,
    ExecuteResult,
    Mutation,
    Record,
    Transaction,
    abort_reason,
    certainly_not_applied,
    connect,
    error_reason,
    from_key,
    from_row,
    from_value,
    to_filter,
    to_key,
    to_row,
    to_value,
)
from shardless.credentials import Credentials, open_channel

__all__ = [
    "ChangeEvent",
    "Client",
    "Condition",
    "Credentials",
    "ExecuteResult",
    "Mutation",
    "Record",
    "Transaction",
    "abort_reason",
    "certainly_not_applied",
    "connect",
    "error_reason",
    "from_key",
    "from_row",
    "from_value",
    "open_channel",
    "to_filter",
    "to_key",
    "to_row",
    "to_value",
]
