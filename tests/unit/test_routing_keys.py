"""Keys become CID v1, raw codec, sha2-256 over the key string."""

import hashlib

import cid
import multihash
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spegel.routing.keys import InvalidKey, key_cid, key_cid_string, key_multihash, varint


def test_varint_known_values() -> None:
    assert varint(0) == b"\x00"
    assert varint(0x55) == b"\x55"
    assert varint(127) == b"\x7f"
    assert varint(128) == b"\x80\x01"
    assert varint(300) == b"\xac\x02"
    with pytest.raises(ValueError):
        varint(-1)


def test_known_cid() -> None:
    # The layout: version 1, raw codec 0x55, sha2-256 0x12, length 32, digest of the key text.
    key = "sha256:abc"
    digest = hashlib.sha256(key.encode()).digest()
    assert key_cid(key) == b"\x01\x55\x12\x20" + digest
    assert key_multihash(key) == b"\x12\x20" + digest
    assert key_cid_string(key) == "bafkreidh5g6dz7jbmpbjpa2y37qa2l4rftko4dez6b34gwb3hg2iv25req"


@given(st.text(min_size=1, max_size=200))
def test_matches_an_independent_implementation(key: str) -> None:
    try:
        data = key.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(InvalidKey):
            key_cid(key)
        return
    expected = cid.make_cid(1, "raw", multihash.encode(hashlib.sha256(data).digest(), "sha2-256"))
    assert key_cid(key) == expected.buffer
    assert key_cid_string(key) == expected.encode("base32").decode()


def test_tags_and_digests_differ() -> None:
    assert key_cid("docker.io/library/nginx:1.27") != key_cid("docker.io/library/nginx:1.28")


@pytest.mark.parametrize("bad", ["", "\ud800"])
def test_bad_keys_raise_a_clear_error(bad: str) -> None:
    with pytest.raises(InvalidKey):
        key_cid(bad)
