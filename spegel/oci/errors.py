"""OCI distribution error codes and their JSON bodies."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any


class ErrorCode(Enum):
    """An OCI error code: its name is the code, its value the HTTP status and default message."""

    BLOB_UNKNOWN = (404, "blob unknown to registry")
    MANIFEST_UNKNOWN = (404, "manifest unknown")
    NAME_UNKNOWN = (404, "repository name not known to registry")
    NAME_INVALID = (400, "invalid repository name")
    DIGEST_INVALID = (400, "provided digest is invalid")
    TAG_INVALID = (400, "invalid tag")
    RANGE_INVALID = (416, "requested range not satisfiable")
    UNSUPPORTED = (405, "the operation is unsupported")
    UNKNOWN = (500, "unknown error")  # as CNCF distribution answers a server-side failure
    UNAVAILABLE = (503, "service unavailable")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def message(self) -> str:
        return self.value[1]


def error_body(code: ErrorCode, detail: Any = None) -> bytes:
    """`{"errors":[{"code":...,"message":...,"detail":...}]}` as bytes."""
    entry: dict[str, Any] = {"code": code.name, "message": code.message}
    if detail is not None:
        entry["detail"] = detail
    return json.dumps({"errors": [entry]}).encode()
