"""OCI error bodies: `{"errors":[{"code","message","detail"}]}` and each code's HTTP status."""

import json

import pytest

from spegel.oci.errors import ErrorCode, error_body

# The distribution spec's codes this pull-only registry answers with, and their statuses (UNKNOWN and
# UNAVAILABLE are CNCF distribution's codes for server-side failures; the spec defines none).
EXPECTED_STATUS = {
    "BLOB_UNKNOWN": 404,
    "MANIFEST_UNKNOWN": 404,
    "NAME_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "DIGEST_INVALID": 400,
    "TAG_INVALID": 400,
    "RANGE_INVALID": 416,
    "UNSUPPORTED": 405,
    "UNKNOWN": 500,
    "UNAVAILABLE": 503,
}


@pytest.mark.parametrize("code", list(ErrorCode))
def test_body_shape_without_detail(code: ErrorCode) -> None:
    body = json.loads(error_body(code))
    assert body == {"errors": [{"code": code.name, "message": code.message}]}
    assert code.status == EXPECTED_STATUS[code.name]
    assert code.message


def test_body_carries_detail_of_any_json_type() -> None:
    assert json.loads(error_body(ErrorCode.BLOB_UNKNOWN, "sha256:x"))["errors"][0]["detail"] == "sha256:x"
    detail = {"digest": "sha256:x", "sizes": [1, 2]}
    assert json.loads(error_body(ErrorCode.DIGEST_INVALID, detail))["errors"][0]["detail"] == detail


def test_body_escapes_hostile_detail() -> None:
    detail = 'a"b\\c\n</script>\x00ä'
    body = error_body(ErrorCode.NAME_INVALID, detail)
    assert json.loads(body)["errors"][0]["detail"] == detail
    assert b"\n" not in body and b"\x00" not in body


def test_codes_are_exactly_the_expected_set() -> None:
    assert {code.name for code in ErrorCode} == set(EXPECTED_STATUS)
