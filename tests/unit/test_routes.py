"""Request paths → routes (pure): what each `/v2/...` path names, and the OCI error for each bad one."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spegel.oci.digest import Digest
from spegel.oci.errors import ErrorCode
from spegel.registry.routes import BaseRoute, BlobRoute, ManifestRoute, RouteError, handler_name, parse_route

DIGEST = Digest.of(b"blob")
SHA512 = Digest.of(b"blob", "sha512")


@pytest.mark.parametrize("path", ["/v2", "/v2/"])
def test_base(path: str) -> None:
    assert parse_route(path) == BaseRoute()


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v2/library/ubuntu/manifests/22.04", ManifestRoute("library/ubuntu", "22.04", None)),
        (f"/v2/a/manifests/{DIGEST}", ManifestRoute("a", None, DIGEST)),
        (f"/v2/a/b/c/blobs/{DIGEST}", BlobRoute("a/b/c", DIGEST)),
        (f"/v2/a/blobs/{SHA512}", BlobRoute("a", SHA512)),
        # the last `manifests`/`blobs` segment splits name from reference: these words may occur in names
        ("/v2/a/manifests/b/manifests/latest", ManifestRoute("a/manifests/b", "latest", None)),
        (f"/v2/blobs/manifests/{DIGEST}", ManifestRoute("blobs", None, DIGEST)),
        (f"/v2/manifests/blobs/{DIGEST}", BlobRoute("manifests", DIGEST)),
    ],
)
def test_content_routes(path: str, route: ManifestRoute | BlobRoute) -> None:
    assert parse_route(path) == route


@pytest.mark.parametrize(
    ("path", "code", "status"),
    [
        ("/v2/A/manifests/latest", ErrorCode.NAME_INVALID, 400),
        ("/v2//manifests/latest", ErrorCode.NAME_INVALID, 400),
        ("/v2/a//b/manifests/latest", ErrorCode.NAME_INVALID, 400),
        ("/v2/../manifests/latest", ErrorCode.NAME_INVALID, 400),
        (f"/v2/a/../b/blobs/{DIGEST}", ErrorCode.NAME_INVALID, 400),
        ("/v2/" + "a" * 256 + "/manifests/latest", ErrorCode.NAME_INVALID, 400),
        ("/v2/a/manifests/.latest", ErrorCode.TAG_INVALID, 400),
        ("/v2/a/manifests/", ErrorCode.TAG_INVALID, 400),
        ("/v2/a/manifests/" + "t" * 129, ErrorCode.TAG_INVALID, 400),
        ("/v2/a/manifests/sha256:abc", ErrorCode.DIGEST_INVALID, 400),
        ("/v2/a/manifests/md5:abc", ErrorCode.DIGEST_INVALID, 400),
        ("/v2/a/blobs/latest", ErrorCode.DIGEST_INVALID, 400),
        ("/v2/a/blobs/", ErrorCode.DIGEST_INVALID, 400),
        ("/v2/a/blobs/..", ErrorCode.DIGEST_INVALID, 400),
        (f"/v2/a/blobs/{str(DIGEST).upper()}", ErrorCode.DIGEST_INVALID, 400),
        ("/v2/a/tags/list", ErrorCode.UNSUPPORTED, 404),
        ("/v2/_catalog", ErrorCode.UNSUPPORTED, 404),
        ("/v2/a/blobs/uploads/", ErrorCode.UNSUPPORTED, 404),
        (f"/v2/a/blobs/{DIGEST}/", ErrorCode.UNSUPPORTED, 404),
        ("/v2/a/manifests", ErrorCode.UNSUPPORTED, 404),
        ("/v2/../../canary", ErrorCode.UNSUPPORTED, 404),
        ("/v1/a/manifests/latest", ErrorCode.UNSUPPORTED, 404),
        ("/", ErrorCode.UNSUPPORTED, 404),
        ("", ErrorCode.UNSUPPORTED, 404),
    ],
)
def test_bad_paths_carry_their_oci_error(path: str, code: ErrorCode, status: int) -> None:
    with pytest.raises(RouteError) as info:
        parse_route(path)
    assert (info.value.code, info.value.status) == (code, status)
    assert info.value.detail


@pytest.mark.parametrize(
    ("path", "handler"),
    [
        ("/v2/", "base"),
        ("/v2/a/manifests/latest", "manifest"),
        (f"/v2/a/blobs/{DIGEST}", "blob"),
        ("/livez", "health"),
        ("/readyz", "health"),
        ("/v2/A/manifests/latest", "manifest"),  # by shape: the 400 is in the code label
        ("/v2/a/tags/list", "other"),
        ("/anything/else", "other"),
    ],
)
def test_handler_labels(path: str, handler: str) -> None:
    assert handler_name(path) == handler


_component = st.from_regex(r"\A[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z").filter(lambda c: len(c) <= 40)
repositories = st.lists(_component, min_size=1, max_size=4).map("/".join).filter(lambda n: len(n) <= 255)
tags = st.from_regex(r"\A[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")
digests = st.tuples(st.binary(max_size=32), st.sampled_from(["sha256", "sha512"])).map(lambda t: Digest.of(*t))


@given(repositories, tags, digests)
def test_valid_parts_route_back_to_themselves(repository: str, tag: str, digest: Digest) -> None:
    assert parse_route(f"/v2/{repository}/manifests/{tag}") == ManifestRoute(repository, tag, None)
    assert parse_route(f"/v2/{repository}/manifests/{digest}") == ManifestRoute(repository, None, digest)
    assert parse_route(f"/v2/{repository}/blobs/{digest}") == BlobRoute(repository, digest)


@given(st.text(max_size=120))
def test_any_path_is_a_route_or_a_route_error(path: str) -> None:
    try:
        route = parse_route(path)
    except RouteError as exc:
        assert exc.code in {
            ErrorCode.UNSUPPORTED,
            ErrorCode.NAME_INVALID,
            ErrorCode.TAG_INVALID,
            ErrorCode.DIGEST_INVALID,
        }
        assert exc.status in (400, 404)
        return
    assert isinstance(route, BaseRoute | ManifestRoute | BlobRoute)
    assert ".." not in getattr(route, "repository", "")
