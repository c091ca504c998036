"""A streaming OpenAI-compatible client that timestamps every server-sent event line as it arrives.

Each receive is read as it comes, never in fixed-size blocks, and every line it completes is
stamped with the kernel's arrival time of those bytes (`loadgen.wire`), so chunk times are what
the wire delivered even when the event loop reads them late. Under Locust the same code runs on
gevent's patched sockets. Connections are kept alive where the server allows it, and one the
server closed while idle (llama-server closes after every stream while advertising keep-alive)
is dropped or replaced, never a failed request. The host name is resolved once per endpoint.
A request's `start` is stamped as its bytes are written, so time spent connecting or queued in
the client is schedule lag or connect time, never TTFT.

The client's public names, from its modules: `endpoint` (the target and its request body),
`preflight` (the check before any load, and the errors it raises), `call` (one streamed
request), `pool` (kept-alive connections), `parsing` (what an answer's headers and events hold).
"""

from loadgen.client.call import StreamingCall
from loadgen.client.endpoint import Endpoint, Messages, MissingApiKey, read_api_key
from loadgen.client.parsing import retry_after_seconds
from loadgen.client.pool import ConnectionPool
from loadgen.client.preflight import (
    AUTH_STATUSES,
    MissingModel,
    TargetRefused,
    TargetUnreachable,
    preflight,
    refused_message,
)

__all__ = [
    "AUTH_STATUSES",
    "ConnectionPool",
    "Endpoint",
    "Messages",
    "MissingApiKey",
    "MissingModel",
    "StreamingCall",
    "TargetRefused",
    "TargetUnreachable",
    "preflight",
    "read_api_key",
    "refused_message",
    "retry_after_seconds",
]
