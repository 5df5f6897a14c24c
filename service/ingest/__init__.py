"""Ingest: ZMQ receivers for detector frames and bluesky documents.

* :class:`FrameReceiver`: frames and control messages (:mod:`tomolock.service.wire`), ordered,
  lossless for control/dark/flat, newest-wins for projections (:class:`LatestQueue`).
* :class:`DocumentReceiver`: bluesky documents from a 0MQ proxy, msgpack only.
* :class:`ScanContext`: per-run context from documents; joins frames to events.
* :class:`ProxyProcess`: bluesky's 0MQ proxy as a child process on loopback.
"""

from .context import DataKeyMap, FrameContext, RunContext, ScanContext
from .documents import (
    DocumentReceiver,
    DocumentStats,
    UnsafePayload,
    pack_document,
    unpack_document,
)
from .frames import (
    FrameReceiver,
    FrameReceiverConfig,
    Item,
    ReceivedFrame,
    ReceiverStats,
    is_droppable,
)
from .latest_queue import LatestQueue, QueueClosed
from .proxy import ProxyProcess

__all__ = [
    "DataKeyMap",
    "DocumentReceiver",
    "DocumentStats",
    "FrameContext",
    "FrameReceiver",
    "FrameReceiverConfig",
    "Item",
    "LatestQueue",
    "ProxyProcess",
    "QueueClosed",
    "ReceivedFrame",
    "ReceiverStats",
    "RunContext",
    "ScanContext",
    "UnsafePayload",
    "is_droppable",
    "pack_document",
    "unpack_document",
]
