"""References, repository names, tags and registries, against the distribution spec grammar."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spegel.oci.digest import Digest
from spegel.oci.reference import (
    InvalidName,
    InvalidReference,
    InvalidTag,
    Reference,
    validate_registry,
    validate_repository,
    validate_tag,
)

DIGEST = Digest.of(b"x")


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "0",
        "library/ubuntu",
        "a.b",
        "a_b",
        "a__b",
        "a-b",
        "a--b",
        "a---b",
        "a/b/c/d",
        "foo.bar_baz-qux/x9",
        "a" * 255,
    ],
)
def test_valid_repository_names(name: str) -> None:
    assert validate_repository(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",
        "Library/ubuntu",
        "_a",
        "a_",
        "-a",
        "a-",
        ".a",
        "a.",
        "a___b",
        "a..b",
        "a.-b",
        "a/",
        "/a",
        "a//b",
        "a b",
        "a:b",
        "a@b",
        "ä",
        "../a",
        "a/../b",
        "a/./b",
        "a" * 256,
        "a\nb",
        "a\n",
    ],
)
def test_invalid_repository_names(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_repository(name)


@pytest.mark.parametrize("tag", ["latest", "v1.0.0", "_x", "X", "1", "a-b_c.d", "a" * 128, "A" + "." * 127])
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a" * 129, "a/b", "a:b", "a b", "a@b", "ä", "a\n"])
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(InvalidTag):
        validate_tag(tag)


@pytest.mark.parametrize(
    "registry",
    ["docker.io", "ghcr.io", "localhost", "localhost:5000", "127.0.0.1:5000", "[::1]:5000", "[fe80::1]", "a-b.c"],
)
def test_valid_registries(registry: str) -> None:
    assert validate_registry(registry) == registry


@pytest.mark.parametrize(
    "registry",
    ["", "-a.io", "a-.io", "a..io", "a.io:", "a.io:port", "a.io:123456", "a/b", "a io", "[zz]:1", "a_b.io", "a.io\n"],
)
def test_invalid_registries(registry: str) -> None:
    with pytest.raises(InvalidReference):
        validate_registry(registry)


def test_parse_tagged_reference() -> None:
    ref = Reference.parse("docker.io/library/ubuntu:22.04")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == ("docker.io", "library/ubuntu", "22.04", None)
    assert ref.name == "docker.io/library/ubuntu"
    assert ref.tag_key() == "docker.io/library/ubuntu:22.04"


def test_parse_registry_with_port_is_not_a_tag() -> None:
    ref = Reference.parse("localhost:5000/a/b:1")
    assert (ref.registry, ref.repository, ref.tag) == ("localhost:5000", "a/b", "1")


def test_parse_digest_and_tag_with_digest() -> None:
    ref = Reference.parse(f"ghcr.io/x/y@{DIGEST}")
    assert (ref.tag, ref.digest) == (None, DIGEST)
    both = Reference.parse(f"ghcr.io/x/y:v1@{DIGEST}")
    assert (both.tag, both.digest) == ("v1", DIGEST)
    with pytest.raises(InvalidReference):
        ref.tag_key()


@pytest.mark.parametrize(
    "text",
    [
        "ubuntu:22.04",  # no registry
        "docker.io/library/ubuntu",  # neither tag nor digest
        "docker.io/Library/ubuntu:1",
        "docker.io/library/ubuntu:.bad",
        "docker.io/library/ubuntu@sha256:short",
        "docker.io/library/ubuntu@md5:abc",
        "bad_registry/x:1",
        "docker.io//x:1",
        "",
        "/",
        ":",
        "@",
    ],
)
def test_parse_rejects_invalid_references(text: str) -> None:
    with pytest.raises(InvalidReference):
        Reference.parse(text)


_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_separator = st.sampled_from([".", "_", "__", "-", "--"])
_component = st.builds(
    lambda first, rest: first + "".join(sep + part for sep, part in rest),
    _alnum,
    st.lists(st.tuples(_separator, _alnum), max_size=3),
)
repositories = st.lists(_component, min_size=1, max_size=4).map("/".join).filter(lambda name: len(name) <= 255)
tags = st.from_regex(r"\A[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}\Z")
registries = st.sampled_from(["docker.io", "localhost:5000", "127.0.0.1:30020", "[::1]:5000", "a.b-c.example"])
digests = st.binary(max_size=64).map(Digest.of)


@given(registries, repositories, st.one_of(st.none(), tags), digests, st.booleans())
def test_str_then_parse_round_trips(
    registry: str, repository: str, tag: str | None, digest: Digest, with_digest: bool
) -> None:
    ref = Reference(registry, repository, tag, digest if with_digest or tag is None else None)
    assert Reference.parse(str(ref)) == ref


@given(st.text(max_size=80))
def test_parse_never_fails_other_than_invalid_reference(text: str) -> None:
    try:
        ref = Reference.parse(text)
    except InvalidReference:
        return
    assert ref.tag is not None or ref.digest is not None
    assert validate_repository(ref.repository)
