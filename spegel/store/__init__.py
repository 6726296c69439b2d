"""Content stores: where a mirror finds the bytes its node holds."""

from spegel.store.base import BlobReader, ContentInfo, ContentStore, NotFound, StoredImage

__all__ = ["BlobReader", "ContentInfo", "ContentStore", "NotFound", "StoredImage"]
