"""
HTTP over overlay streams for httpx: ``httpx.AsyncClient(transport=HTTPTransport(node))``.

The HTTP/1.1 engine is httpcore's own (httpx's), unchanged: its connection
pool gets a network backend whose ``connect_tcp(host, port)`` opens an
overlay stream with :meth:`Node.open_connection
<pilotproto.aio.Node.open_connection>` instead of a TCP connection.  So
keep-alive, pooling, streaming bodies both ways and every header rule are
httpx's; only the address changes:

- ``http://agent-b/...``: the peer named agent-b, virtual port 80;
- ``http://agent-b:8080/...``: virtual port 8080;
- ``http://0-8eac-9041-50da/...``: a peer by address (``0:8EAC.9041.50DA``
  with ``-`` for ``:`` and ``.``, since a URL host cannot hold a ``:``);
- ``agent-b.pilot`` is agent-b too (a pilot hostname holds no dot).

``https://`` is refused (UnsupportedProtocol): overlay streams are already
end-to-end encrypted to the peer's key, and there is no certificate for a
pilot name.  A peer that cannot be reached fails at once with
:class:`httpx.ConnectError` whose ``__cause__`` is the daemon's PilotError
(``not_found``, ``not_trusted``, ``connection_refused``...) and whose
message names its code and hint.

Needs httpx (``pip install 'pilotproto[aio]'``).  :class:`HTTPX2Transport`
is the same transport for ``httpx2`` clients (what the ``mcp`` SDK 2.x uses:
``httpx2.AsyncClient(transport=HTTPX2Transport(node))``); it converts each
request and response at the edge, so streaming bodies (server-sent events)
and errors (``httpx2.ConnectError`` naming the pilot code) are kept.
"""

from __future__ import annotations

import contextlib
import asyncio
import re
import typing

import httpcore
import httpx

from ..common.names import check_target
from ..errors import InvalidArgument, PilotError, Timeout

if typing.TYPE_CHECKING:
    from .node import Node

_ADDRESS_HOST = re.compile(r"^(\d{1,5})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})$")

#: httpcore's errors -> httpx's, most specific first
_ERRORS: list[tuple[type[Exception], type[httpx.HTTPError]]] = [
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
]


def peer_for_host(host: str) -> str:
    """The pilot peer a URL host names (a hostname, or an address written with '-')."""
    host = host.lower().rstrip(".")
    if host.endswith(".pilot"):
        host = host[: -len(".pilot")]
    found = _ADDRESS_HOST.match(host)
    if found:
        network, *node = found.groups()
        return check_target(f"{network}:{'.'.join(node).upper()}")
    return check_target(host)


def describe(error: PilotError) -> str:
    """One line naming the daemon's code, message and hint."""
    text = f"[{error.code}] {error.message}"
    return f"{text} (hint: {error.hint})" if error.hint else text


def _carrying(error: Exception, pilot_error: PilotError) -> Exception:
    # httpcore's pool re-raises a connection's error "from None", which drops
    # __cause__: the PilotError rides on the exception itself.
    error.pilot_error = pilot_error
    return error


def _pilot_cause(error: BaseException) -> PilotError | None:
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, PilotError):
            return error
        carried = getattr(error, "pilot_error", None)
        if isinstance(carried, PilotError):
            return carried
        error, seen = error.__cause__, seen + 1
    return None


def _mapped(error: Exception, request: httpx.Request | None) -> Exception:
    """httpx's error for an httpcore one, chained to the PilotError behind it if there is one."""
    for core, public in _ERRORS:
        if isinstance(error, core):
            cause = _pilot_cause(error) or error
            mapped = public(describe(cause) if isinstance(cause, PilotError) else str(error))
            if request is not None:
                mapped.request = request
            mapped.__cause__ = cause
            return mapped
    return error


class PilotNetworkStream(httpcore.AsyncNetworkStream):
    """An overlay stream as httpcore reads and writes it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout(f"nothing arrived on the pilot stream for {timeout:g} s") from None
        except OSError as e:
            raise httpcore.ReadError(str(e)) from e

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()  # back-pressure: the peer's flow control, through the daemon
        except TimeoutError:
            raise httpcore.WriteTimeout(f"the pilot stream took no data for {timeout:g} s") from None
        except (OSError, RuntimeError) as e:
            raise httpcore.WriteError(str(e) or "the pilot stream closed") from e

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):  # the peer went first: closed either way
            await self._writer.wait_closed()

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            # An idle keep-alive connection that became readable was closed by
            # the server: asyncio reads eagerly, so that shows as EOF.
            return self._reader.at_eof() or self._reader.exception() is not None
        if info in ("peername", "sockname", "pilot"):
            return self._writer.get_extra_info(info)
        return None


class PilotNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network: ``connect_tcp(host, port)`` opens an overlay stream to the peer ``host`` names."""

    def __init__(self, node: "Node"):
        self._node = node

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options=None) -> PilotNetworkStream:
        try:
            peer = peer_for_host(host)
            reader, writer = await self._node.open_connection(peer, port, timeout=timeout)
        except TimeoutError as e:  # the daemon's Timeout is a TimeoutError too
            if not isinstance(e, PilotError):
                e = Timeout(f"no pilot stream to {host}:{port} within {timeout:g} s")
            raise _carrying(httpcore.ConnectTimeout(describe(e)), e) from e
        except PilotError as e:
            raise _carrying(httpcore.ConnectError(describe(e)), e) from e
        return PilotNetworkStream(reader, writer)

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise httpcore.UnsupportedProtocol("pilotproto.aio.HTTPTransport reaches peers, not local UNIX sockets")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes], request: httpx.Request):
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> typing.AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except Exception as e:
            mapped = _mapped(e, self._request)
            if mapped is e:
                raise
            raise mapped from mapped.__cause__

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()


class HTTPTransport(httpx.AsyncBaseTransport):
    """
    An httpx transport over the overlay: ``host`` is a peer (name or
    ``N-XXXX-XXXX-XXXX`` address), ``port`` a virtual port (default 80).
    Connections are pooled and kept alive as by httpx's own transport.
    """

    def __init__(self, node: "Node", *, limits: httpx.Limits = httpx.Limits(), retries: int = 0):
        if not callable(getattr(node, "open_connection", None)):
            raise TypeError(f"HTTPTransport needs a pilotproto.aio Node (from pilotproto.aio.connect()), not {node!r}")
        self.node = node
        self._pool = httpcore.AsyncConnectionPool(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            retries=retries,
            network_backend=PilotNetworkBackend(node),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"pilot carries http:// only, not {request.url.scheme}:// ({request.url}): overlay streams are "
                "already end-to-end encrypted to the peer's key, and no certificate names a pilot peer. "
                f"Use http://{request.url.host}/...", request=request)
        try:
            peer_for_host(request.url.host)
        except InvalidArgument as e:
            raise httpx.ConnectError(describe(e), request=request) from e
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = await self._pool.handle_async_request(core_request)
        except Exception as e:
            mapped = _mapped(e, request)
            if mapped is e:
                raise
            raise mapped from mapped.__cause__
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(response.stream, request), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def __aenter__(self) -> "HTTPTransport":
        await self._pool.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._pool.__aexit__(*exc)


# -- httpx2 (the mcp SDK 2.x's HTTP client) ---------------------------------------------------


class _RequestStream(httpx.AsyncByteStream):
    """An httpx2 request body, as httpx reads it."""

    def __init__(self, stream):
        self._stream = stream

    async def __aiter__(self) -> typing.AsyncIterator[bytes]:
        async for part in self._stream:
            yield part


def _as_httpx2(error: Exception, request):
    """httpx2's error of the same name for an httpx one, carrying the same PilotError."""
    import httpx2

    kind = getattr(httpx2, type(error).__name__, None)
    if not (isinstance(kind, type) and issubclass(kind, httpx2.HTTPError)):
        kind = httpx2.TransportError
    mapped = kind(str(error), request=request) if issubclass(kind, httpx2.RequestError) else kind(str(error))
    cause = _pilot_cause(error)
    if cause is not None:
        mapped.pilot_error = cause
    mapped.__cause__ = cause or error
    return mapped


_HTTPX2_STREAM = None


def _response_stream_class():
    global _HTTPX2_STREAM
    if _HTTPX2_STREAM is None:
        import httpx2

        class ResponseStream(httpx2.AsyncByteStream):
            """An httpx response body, as httpx2 reads it (errors become httpx2's)."""

            def __init__(self, response: httpx.Response, request):
                self._response = response
                self._request = request

            async def __aiter__(self) -> typing.AsyncIterator[bytes]:
                try:
                    async for part in self._response.aiter_raw():
                        yield part
                except httpx.HTTPError as e:
                    mapped = _as_httpx2(e, self._request)
                    raise mapped from mapped.__cause__

            async def aclose(self) -> None:
                await self._response.aclose()

        _HTTPX2_STREAM = ResponseStream
    return _HTTPX2_STREAM


class HTTPX2Transport:
    """
    :class:`HTTPTransport` for ``httpx2.AsyncClient`` (an ``httpx2``
    transport: it has httpx2's ``handle_async_request``/``aclose``).  Needs
    ``httpx2`` (installed with ``mcp`` 2.x).
    """

    def __init__(self, node: "Node", *, limits: httpx.Limits = httpx.Limits(), retries: int = 0):
        import httpx2  # noqa: F401  (fail here, clearly, when it is missing)

        self._inner = HTTPTransport(node, limits=limits, retries=retries)
        self.node = node

    async def handle_async_request(self, request):
        import httpx2

        inner = httpx.Request(request.method, str(request.url), headers=request.headers.raw,
                              stream=_RequestStream(request.stream), extensions=dict(request.extensions))
        try:
            response = await self._inner.handle_async_request(inner)
        except httpx.HTTPError as e:
            mapped = _as_httpx2(e, request)
            raise mapped from mapped.__cause__
        return httpx2.Response(status_code=response.status_code, headers=response.headers.raw,
                               stream=_response_stream_class()(response, request), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> "HTTPX2Transport":
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._inner.__aexit__(*exc)
