"""OCI distribution error codes and their JSON bodies."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any


class ErrorCode(Enum):
    """An OCI error code with the HTTP status this registry answers it with."""

    BLOB_UNKNOWN = 404
    MANIFEST_UNKNOWN = 404
    NAME_UNKNOWN = 404
    NAME_INVALID = 400
    DIGEST_INVALID = 400
    TAG_INVALID = 400
    RANGE_INVALID = 416
    UNSUPPORTED = 405

    def __init__(self, status: int) -> None:
        self.status = status


_MESSAGES = {
    ErrorCode.BLOB_UNKNOWN: "blob unknown to registry",
    ErrorCode.MANIFEST_UNKNOWN: "manifest unknown",
    ErrorCode.NAME_UNKNOWN: "repository name not known to registry",
    ErrorCode.NAME_INVALID: "invalid repository name",
    ErrorCode.DIGEST_INVALID: "provided digest did not match uploaded content",
    ErrorCode.TAG_INVALID: "invalid tag",
    ErrorCode.RANGE_INVALID: "requested range not satisfiable",
    ErrorCode.UNSUPPORTED: "the operation is unsupported",
}


def error_body(code: ErrorCode, detail: Any = None, message: str | None = None) -> bytes:
    """`{"errors":[{"code":...,"message":...,"detail":...}]}` as bytes."""
    entry: dict[str, Any] = {"code": code.name, "message": message or _MESSAGES[code]}
    if detail is not None:
        entry["detail"] = detail
    return json.dumps({"errors": [entry]}).encode()
