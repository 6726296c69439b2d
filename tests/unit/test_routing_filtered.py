from spegel.mirror.policy import RegistryFilters
from spegel.routing.base import KeyState
from spegel.routing.filtered import TagFilteringRouter
from spegel.routing.memory import MemoryNetwork


async def test_excluded_tags_are_not_advertised_but_digests_are() -> None:
    network = MemoryNetwork()
    here, there = network.join("10.0.0.1:5000"), network.join("10.0.0.2:5000")
    filtered = TagFilteringRouter(here, RegistryFilters([":latest$"]).excludes)
    digest = "sha256:" + "a" * 64
    # tags come with their manifest's digest appended: the filter sees the tag alone (`:latest$` still matches)
    await filtered.advertise([f"docker.io/library/nginx:latest@{digest}", f"docker.io/library/nginx:1.27@{digest}"])
    await filtered.advertise([digest])
    assert await there.lookup("docker.io/library/nginx:latest", 3, 0.01) == []
    [tag] = await there.lookup("docker.io/library/nginx:1.27", 3, 0.01)
    assert (tag.address, tag.digest) == ("10.0.0.1:5000", digest)
    assert [h.state for h in await there.lookup(digest, 3, 0.01)] == [KeyState.COMPLETE]
    await filtered.withdraw([digest])
    assert await there.lookup(digest, 3, 0.01) == []
