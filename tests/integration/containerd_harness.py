"""Helpers of the containerd integration tests: images pushed to the upstream, containerd pointed at it."""

from __future__ import annotations

import httpx

from benchmark.daemons import Containerd, Registry
from benchmark.images import ImageSpec, SyntheticImage, build, push


def plain_http_upstream(containerd: Containerd, upstream: Registry) -> None:
    """Let containerd pull from the plain-HTTP upstream registry under its own name."""
    directory = containerd.hosts_dir / upstream.address
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.toml").write_text(f'server = "{upstream.url}"\n')


async def pushed(upstream: Registry, spec: ImageSpec, repository: str, tag: str) -> tuple[SyntheticImage, str]:
    """Build the image of `spec`, push it to `upstream` as `repository:tag`; returns it and its full name."""
    image = build(spec)
    async with httpx.AsyncClient() as client:
        await push(image, client, upstream.url, repository, tag)
    return image, f"{upstream.address}/{repository}:{tag}"


def held_digests(image: SyntheticImage) -> list[str]:
    """The digests a node of this platform holds after pulling `image`: index (if any), manifest, config, layers."""
    host = image.platforms[0]
    top = [image.index] if image.index is not None else []
    return [str(d.digest) for d in (*top, host.manifest, host.config, *host.layers)]
