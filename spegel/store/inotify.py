"""Linux inotify for trio, through libc (ctypes): watch directories, receive their events without polling.

`parse_events` is the pure part (the kernel's packed `struct inotify_event` records). `Inotify` owns one
non-blocking inotify descriptor; `read()` waits with `trio.lowlevel.wait_readable` and returns the events
of one read. An `OVERFLOW` event (`wd == -1`) means the kernel dropped events: the caller must rescan.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from dataclasses import dataclass

import trio

ACCESS, MODIFY, ATTRIB, CLOSE_WRITE = 0x1, 0x2, 0x4, 0x8
MOVED_FROM, MOVED_TO, CREATE, DELETE, DELETE_SELF = 0x40, 0x80, 0x100, 0x200, 0x400
UNMOUNT, OVERFLOW, IGNORED, ONLYDIR, ISDIR = 0x2000, 0x4000, 0x8000, 0x01000000, 0x40000000
_NONBLOCK, _CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (of the NUL-padded name that follows)
_READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class Event:
    wd: int
    mask: int
    cookie: int
    name: str  # empty for events on the watched directory itself

    @property
    def is_dir(self) -> bool:
        return bool(self.mask & ISDIR)


def parse_events(buffer: bytes) -> list[Event]:
    """The events packed in `buffer` (whole records only, as the kernel returns them)."""
    events, offset = [], 0
    while offset + _HEADER.size <= len(buffer):
        wd, mask, cookie, length = _HEADER.unpack_from(buffer, offset)
        offset += _HEADER.size
        raw = buffer[offset : offset + length]
        offset += length
        events.append(Event(wd, mask, cookie, raw.split(b"\0", 1)[0].decode(errors="surrogateescape")))
    return events


_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


class Inotify:
    """One inotify instance. Close it with `close()` (or `with`)."""

    def __init__(self) -> None:
        self.fd = _check(_libc.inotify_init1(_NONBLOCK | _CLOEXEC), "inotify_init1")

    def add_watch(self, path: str | os.PathLike[str], mask: int) -> int:
        """Watch `path` for `mask`; returns the watch descriptor. Raises OSError (e.g. FileNotFoundError)."""
        return _check(_libc.inotify_add_watch(self.fd, os.fsencode(path), mask), f"inotify_add_watch {path}")

    def rm_watch(self, wd: int) -> None:
        """Stop a watch (no error if the kernel already removed it)."""
        _libc.inotify_rm_watch(self.fd, wd)

    async def read(self) -> list[Event]:
        """The next batch of events; waits until there is one. Cancellable."""
        while True:
            try:
                return parse_events(os.read(self.fd, _READ_SIZE))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(RuntimeError):  # outside a trio run nothing can be waiting on it
                trio.lowlevel.notify_closing(self.fd)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
