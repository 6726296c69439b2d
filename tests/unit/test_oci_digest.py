"""Digests: parsing per the OCI grammar (sha256, sha512 only), computing, and verifying streams."""

import hashlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spegel.oci.digest import Digest, InvalidDigest, UnsupportedAlgorithm

SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
SHA512_ABC = (
    "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
    "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
)


def test_parse_sha256_and_sha512() -> None:
    assert Digest.parse(f"sha256:{SHA256_ABC}") == Digest("sha256", SHA256_ABC)
    assert Digest.parse(f"sha512:{SHA512_ABC}") == Digest("sha512", SHA512_ABC)


def test_str_is_canonical_form() -> None:
    assert str(Digest.parse(f"sha256:{SHA256_ABC}")) == f"sha256:{SHA256_ABC}"


def test_of_matches_known_vectors() -> None:
    assert Digest.of(b"abc") == Digest("sha256", SHA256_ABC)
    assert Digest.of(b"abc", "sha512") == Digest("sha512", SHA512_ABC)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha256:",
        ":" + SHA256_ABC,
        SHA256_ABC,
        "sha256:" + SHA256_ABC.upper(),  # hex must be lower case
        "SHA256:" + SHA256_ABC,
        "sha256:" + SHA256_ABC[:-1],  # too short
        "sha256:" + SHA256_ABC + "0",  # too long
        "sha256:" + SHA256_ABC[:-1] + "g",
        "sha512:" + SHA256_ABC,  # sha256 length under sha512
        "sha256:" + SHA256_ABC + "\n",
        " sha256:" + SHA256_ABC,
        "sha256 :" + SHA256_ABC,
        "sha256:" + "/" * 64,
        "sha256:../../../../etc/passwd",
        "sha256:" + SHA256_ABC + "/../x",
    ],
)
def test_invalid_digests_are_rejected(text: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(text)


@pytest.mark.parametrize("algorithm", ["sha384", "md5", "blake3", "sha256+b64u", "multihash.sha256"])
def test_wellformed_but_unsupported_algorithms(algorithm: str) -> None:
    with pytest.raises(UnsupportedAlgorithm):
        Digest.parse(f"{algorithm}:{SHA256_ABC}")


def test_error_message_is_bounded_for_huge_input() -> None:
    with pytest.raises(InvalidDigest) as info:
        Digest.parse("sha256:" + "x" * 100_000)
    assert len(str(info.value)) < 400


@given(st.binary(max_size=4096), st.sampled_from(["sha256", "sha512"]))
def test_of_then_parse_round_trips(data: bytes, algorithm: str) -> None:
    digest = Digest.of(data, algorithm)
    assert digest.hex == hashlib.new(algorithm, data).hexdigest()
    assert Digest.parse(str(digest)) == digest


@given(st.binary(max_size=4096), st.lists(st.integers(0, 4096), max_size=8), st.sampled_from(["sha256", "sha512"]))
def test_verifier_accepts_content_in_any_pieces(data: bytes, cuts: list[int], algorithm: str) -> None:
    verifier = Digest.of(data, algorithm).verifier()
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        verifier.update(memoryview(data)[start:end])
    assert verifier.verified()
    assert verifier.size == len(data)


@given(st.binary(min_size=1, max_size=1024), st.integers(0, 1023), st.integers(1, 255))
def test_verifier_rejects_changed_content(data: bytes, position: int, flip: int) -> None:
    position %= len(data)
    changed = bytearray(data)
    changed[position] ^= flip
    verifier = Digest.of(data).verifier()
    verifier.update(bytes(changed))
    assert not verifier.verified()
    assert verifier.digest() == Digest.of(bytes(changed))


def test_verifier_rejects_truncated_and_extended_content() -> None:
    expected = Digest.of(b"abcdef")
    for content in (b"abcde", b"abcdefg", b""):
        verifier = expected.verifier()
        verifier.update(content)
        assert not verifier.verified()
