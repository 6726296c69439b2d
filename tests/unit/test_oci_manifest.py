"""Manifest and index parsing: descriptors, media type detection, children, and rejection of bad documents."""

import json
from typing import Any

import pytest

from spegel.oci import mediatypes
from spegel.oci.digest import Digest
from spegel.oci.manifest import (
    REF_NAME_ANNOTATION,
    Descriptor,
    Index,
    InvalidManifest,
    Manifest,
    Platform,
    children,
    detect_media_type,
    parse,
)

CONFIG = Digest.of(b"config")
LAYER1 = Digest.of(b"layer1")
LAYER2 = Digest.of(b"layer2")


def descriptor(media_type: str, digest: Digest, size: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(digest), "size": size, **extra}


def manifest_json(media_type: str | None = mediatypes.OCI_MANIFEST, **overrides: Any) -> bytes:
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "config": descriptor(mediatypes.OCI_CONFIG, CONFIG, 6),
        "layers": [
            descriptor(mediatypes.OCI_LAYER_GZIP, LAYER1, 100),
            descriptor(mediatypes.OCI_LAYER_ZSTD, LAYER2, 200, annotations={"k": "v"}),
        ],
    }
    if media_type is not None:
        obj["mediaType"] = media_type
    obj.update(overrides)
    return json.dumps(obj).encode()


def index_json(media_type: str | None = mediatypes.OCI_INDEX) -> bytes:
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "manifests": [
            descriptor(mediatypes.OCI_MANIFEST, LAYER1, 10, platform={"os": "linux", "architecture": "amd64"}),
            descriptor(
                mediatypes.OCI_MANIFEST,
                LAYER2,
                20,
                platform={"os": "linux", "architecture": "arm64", "variant": "v8"},
                annotations={REF_NAME_ANNOTATION: "docker.io/a/b:1"},
            ),
        ],
    }
    if media_type is not None:
        obj["mediaType"] = media_type
    return json.dumps(obj).encode()


def test_parse_oci_manifest() -> None:
    document = parse(manifest_json())
    assert isinstance(document, Manifest)
    assert document.media_type == mediatypes.OCI_MANIFEST
    assert document.config == Descriptor(mediatypes.OCI_CONFIG, CONFIG, 6)
    assert [layer.digest for layer in document.layers] == [LAYER1, LAYER2]
    assert [layer.size for layer in document.layers] == [100, 200]
    assert document.layers[1].annotations == {"k": "v"}
    assert children(document) == (document.config, *document.layers)


def test_parse_index_with_platforms() -> None:
    document = parse(index_json())
    assert isinstance(document, Index)
    assert [d.platform for d in document.manifests] == [
        Platform("linux", "amd64"),
        Platform("linux", "arm64", "v8"),
    ]
    assert document.manifests[1].annotations[REF_NAME_ANNOTATION] == "docker.io/a/b:1"
    assert children(document) == document.manifests


def test_docker_media_types() -> None:
    docker_manifest = parse(manifest_json(mediatypes.DOCKER_MANIFEST))
    assert isinstance(docker_manifest, Manifest)
    assert docker_manifest.media_type == mediatypes.DOCKER_MANIFEST
    docker_list = parse(index_json(mediatypes.DOCKER_MANIFEST_LIST))
    assert isinstance(docker_list, Index)
    assert mediatypes.is_index(docker_list.media_type)


def test_media_type_is_detected_from_shape_when_not_declared() -> None:
    assert detect_media_type(manifest_json(None)) == mediatypes.OCI_MANIFEST
    assert detect_media_type(index_json(None)) == mediatypes.OCI_INDEX
    assert isinstance(parse(index_json(None)), Index)


def test_given_media_type_wins_over_detection() -> None:
    assert parse(manifest_json(None), mediatypes.DOCKER_MANIFEST).media_type == mediatypes.DOCKER_MANIFEST
    # a media type that names no manifest (e.g. a layer's) does not count: the shape decides
    assert isinstance(parse(index_json(None), mediatypes.OCI_LAYER), Index)


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[]", b"42", b'"x"', b"{}", b'{"schemaVersion": 2}', b"\xff\xfe", b'{"layers": []}'],
)
def test_non_manifests_are_not_detected(data: bytes) -> None:
    assert detect_media_type(data) is None
    with pytest.raises(InvalidManifest):
        parse(data)


@pytest.mark.parametrize(
    "overrides",
    [
        {"config": "nope"},
        {"config": {"mediaType": mediatypes.OCI_CONFIG, "digest": str(CONFIG)}},  # no size
        {"config": descriptor(mediatypes.OCI_CONFIG, CONFIG, -1)},
        {"config": descriptor(mediatypes.OCI_CONFIG, CONFIG, "6")},
        {"config": {"mediaType": mediatypes.OCI_CONFIG, "digest": "sha256:zz", "size": 1}},
        {"config": {"mediaType": 5, "digest": str(CONFIG), "size": 1}},
        {"config": descriptor(mediatypes.OCI_CONFIG, CONFIG, 6, annotations=["x"])},
        {"layers": None},
        {"layers": [None]},
        {"layers": [{"digest": str(LAYER1), "size": 1}]},
    ],
)
def test_bad_descriptors_are_invalid_manifests(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidManifest):
        parse(manifest_json(**overrides))


def test_index_with_bad_manifests_list_is_invalid() -> None:
    for manifests in (None, 5, [{"mediaType": mediatypes.OCI_MANIFEST}], ["x"]):
        data = json.dumps({"mediaType": mediatypes.OCI_INDEX, "manifests": manifests}).encode()
        with pytest.raises(InvalidManifest):
            parse(data)


def test_descriptor_json_round_trip() -> None:
    original = Descriptor(
        mediatypes.OCI_MANIFEST, LAYER1, 5, {REF_NAME_ANNOTATION: "r.io/a:1"}, Platform("linux", "arm", "v7")
    )
    again = Descriptor.from_json(original.to_json())
    assert again == original
    assert again.annotations == original.annotations
    assert again.platform == original.platform
    plain = Descriptor(mediatypes.OCI_LAYER, LAYER2, 0)
    assert plain.to_json() == {"mediaType": mediatypes.OCI_LAYER, "digest": str(LAYER2), "size": 0}
