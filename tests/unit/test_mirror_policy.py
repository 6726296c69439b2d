from spegel.mirror.policy import RegistryFilters


def test_filters_match_anywhere_in_the_tag_key() -> None:
    filters = RegistryFilters([":latest$", "^internal.example/"])
    assert filters.excludes("docker.io/library/nginx:latest")
    assert filters.excludes("internal.example/team/app:1.0")
    assert not filters.excludes("docker.io/library/nginx:1.27")
    assert not RegistryFilters().excludes("docker.io/library/nginx:latest")
