"""A trio client for containerd's gRPC socket: content, images, events, version, and CRI image pulls.

Every call is one grpclib coroutine on the `AsyncioThread` bridge (see bridge.py for why). One HTTP/2
connection is shared by all calls; grpclib reconnects by itself on the next call after containerd restarts.
Errors are mapped to three kinds: `NotFound` (containerd answered NOT_FOUND), `ContainerdUnavailable` (no
socket, connection refused or lost, deadline exceeded: worth retrying later) and `ContainerdError` (any
other answer). Unary calls have a deadline (`timeout`); streams have none.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpclib.client
import grpclib.exceptions
from google.protobuf import empty_pb2
from grpclib.const import Status

from spegel.store.base import NotFound
from spegel.store.containerd.bridge import AsyncioThread, BridgeClosed, Emit, StreamReceiver
from spegel.store.containerd.proto import (
    content_grpc,
    content_pb2,
    cri_grpc,
    cri_pb2,
    events_grpc,
    events_pb2,
    images_grpc,
    images_pb2,
    types_pb2,
    version_grpc,
)

T = TypeVar("T")

NAMESPACE_HEADER = "containerd-namespace"
DEFAULT_TIMEOUT = 5.0  # containerd answers metadata calls in about a millisecond; a hung one must not hang us


class ContainerdError(Exception):
    """containerd answered a call with an error."""


class ContainerdUnavailable(ContainerdError):
    """containerd cannot be reached right now (no socket, refused, connection lost, deadline exceeded)."""


@dataclass(frozen=True)
class Version:
    """containerd's version: the text it reports and its (major, minor)."""

    text: str
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse `v2.1.9`, `2.1.9~ds1-1` and the like; raises ValueError when no `major.minor` is found."""
        match = re.match(r"^v?(\d+)\.(\d+)", text)
        if match is None:
            raise ValueError(f"unrecognised containerd version {text[:100]!r}")
        return cls(text, int(match[1]), int(match[2]))

    def at_least(self, major: int, minor: int) -> bool:
        return (self.major, self.minor) >= (major, minor)


def _map_error(exc: BaseException, what: str) -> BaseException | None:
    if isinstance(exc, grpclib.exceptions.GRPCError):
        if exc.status == Status.NOT_FOUND:
            return NotFound(f"{what}: {exc.message}")
        if exc.status in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
            return ContainerdUnavailable(f"{what}: {exc.status.name} {exc.message or ''}".rstrip())
        return ContainerdError(f"{what}: {exc.status.name} {exc.message or ''}".rstrip())
    if isinstance(exc, OSError | grpclib.exceptions.StreamTerminatedError | grpclib.exceptions.ProtocolError):
        return ContainerdUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, TimeoutError):
        return ContainerdUnavailable(f"{what}: deadline exceeded")
    return None


class ContainerdClient:
    """A connection to one containerd socket, for calls in one namespace (CRI calls ignore it).

    Making one starts its bridge thread (no connection yet); `close()` (or leaving `async with`) closes the
    channel and stops the thread. Safe to use from many trio tasks, and from several trio runs one after another.
    """

    def __init__(self, socket: str, namespace: str = "k8s.io", timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket = socket
        self.namespace = namespace
        self.timeout = timeout
        self._metadata = {NAMESPACE_HEADER: namespace}
        self._bridge = AsyncioThread(name=f"containerd-grpc:{socket}")
        # grpclib binds a channel to the loop it is made in; it connects lazily, on the first call
        self._channel = self._bridge.call(lambda: grpclib.client.Channel(path=socket))
        self._content = content_grpc.ContentStub(self._channel)
        self._images = images_grpc.ImagesStub(self._channel)
        self._events = events_grpc.EventsStub(self._channel)
        self._version = version_grpc.VersionStub(self._channel)
        self._cri = cri_grpc.ImageServiceStub(self._channel)

    async def __aenter__(self) -> ContainerdClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and stop the bridge thread (calls still running are cancelled). Idempotent."""
        with contextlib.suppress(BridgeClosed):
            self._bridge.call(self._channel.close)
        self._bridge.close()

    async def _call(self, what: str, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        try:
            return await self._bridge.run(factory)
        except Exception as exc:
            mapped = _map_error(exc, what)
            if mapped is None:
                raise
            raise mapped from exc

    def _stream(
        self, what: str, factory: Callable[[Emit[T]], Coroutine[Any, Any, None]]
    ) -> AbstractAsyncContextManager[StreamReceiver[T]]:
        def map_error(exc: BaseException) -> BaseException:
            mapped = _map_error(exc, what)
            if mapped is None:
                return exc
            mapped.__cause__ = exc
            return mapped

        return self._bridge.stream(factory, map_error=map_error)

    # --- version ---

    async def version(self) -> Version:
        """containerd's version (Version.Version)."""
        response = await self._call("version", lambda: self._version.Version(empty_pb2.Empty(), timeout=self.timeout))
        return Version.parse(response.version)

    # --- images ---

    async def get_image(self, name: str) -> images_pb2.Image:
        response = await self._call(
            f"image {name}",
            lambda: self._images.Get(
                images_pb2.GetImageRequest(name=name), metadata=self._metadata, timeout=self.timeout
            ),
        )
        return response.image

    async def list_images(self) -> list[images_pb2.Image]:
        response = await self._call(
            "list images",
            lambda: self._images.List(images_pb2.ListImagesRequest(), metadata=self._metadata, timeout=self.timeout),
        )
        return list(response.images)

    async def delete_image(self, name: str, sync: bool = False) -> None:
        """Delete an image; with `sync` containerd returns only after garbage collection has run."""
        await self._call(
            f"delete image {name}",
            lambda: self._images.Delete(
                images_pb2.DeleteImageRequest(name=name, sync=sync), metadata=self._metadata, timeout=60.0
            ),
        )

    # --- content ---

    async def content_info(self, digest: str) -> content_pb2.Info:
        response = await self._call(
            f"content {digest}",
            lambda: self._content.Info(
                content_pb2.InfoRequest(digest=digest), metadata=self._metadata, timeout=self.timeout
            ),
        )
        return response.info

    async def list_content(self) -> list[content_pb2.Info]:
        """Every blob of the namespace (committed content only)."""

        async def call() -> list[content_pb2.Info]:
            infos: list[content_pb2.Info] = []
            request = content_pb2.ListContentRequest()
            for response in await self._content.List(request, metadata=self._metadata, timeout=self.timeout):
                infos.extend(response.info)
            return infos

        return await self._call("list content", call)

    async def list_statuses(self) -> list[content_pb2.Status]:
        """The namespace's ingests (blobs being written)."""
        response = await self._call(
            "list statuses",
            lambda: self._content.ListStatuses(
                content_pb2.ListStatusesRequest(), metadata=self._metadata, timeout=self.timeout
            ),
        )
        return list(response.statuses)

    def read_content(self, digest: str, offset: int, size: int) -> AbstractAsyncContextManager[StreamReceiver[bytes]]:
        """`async with client.read_content(digest, offset, size) as pieces:` the bytes, in order.

        Raises `NotFound` (when iterating) if the blob is not in the namespace.
        """

        async def call(emit: Emit[bytes]) -> None:
            request = content_pb2.ReadContentRequest(digest=digest, offset=offset, size=size)
            async with self._content.Read.open(metadata=self._metadata) as stream:
                await stream.send_message(request, end=True)
                async for response in stream:
                    await emit(response.data)

        return self._stream(f"read {digest}", call)

    # --- events ---

    def subscribe(self, filters: list[str]) -> AbstractAsyncContextManager[StreamReceiver[types_pb2.Envelope]]:
        """`async with client.subscribe(filters) as envelopes:` containerd's events, in publication order.

        Each filter is containerd's syntax (`topic=="/content/create",namespace==k8s.io`); several are OR-ed.
        The stream ends with `ContainerdUnavailable` when containerd goes away.
        """

        async def call(emit: Emit[types_pb2.Envelope]) -> None:
            async with self._events.Subscribe.open() as stream:
                await stream.send_message(events_pb2.SubscribeRequest(filters=filters), end=True)
                async for envelope in stream:
                    await emit(envelope)

        return self._stream("subscribe", call)

    # --- CRI ---

    async def pull_image(self, reference: str, timeout: float = 600.0) -> str:
        """Pull an image as the kubelet does (CRI ImageService.PullImage); returns the image id."""
        response = await self._call(
            f"pull {reference}",
            lambda: self._cri.PullImage(
                cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=reference)), timeout=timeout
            ),
        )
        return response.image_ref

    async def remove_image(self, reference: str, timeout: float = 60.0) -> None:
        """Remove an image as the kubelet does (CRI ImageService.RemoveImage): every name of it."""
        await self._call(
            f"remove {reference}",
            lambda: self._cri.RemoveImage(
                cri_pb2.RemoveImageRequest(image=cri_pb2.ImageSpec(image=reference)), timeout=timeout
            ),
        )
