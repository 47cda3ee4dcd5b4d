"""Registries with lazy sources: loaded once, only when a name is missing or the whole registry is listed."""

import pytest

from trainlab.registry import Registry, UnknownNameError


def registry_with_source():
    registry = Registry("thing")
    registry.add("own", lambda: "own")
    calls = []

    def load():
        calls.append(1)
        registry.add("extra", lambda: "extra")
        registry.add("po_own" if "own" in registry else "own", lambda: "upstream")  # a source may look names up

    registry.add_source(load)
    return registry, calls


def test_a_name_already_held_does_not_load_the_source():
    registry, calls = registry_with_source()
    assert registry.get("OWN").factory() == "own" and "own" in registry
    assert not calls


def test_the_first_missing_name_loads_it_once():
    registry, calls = registry_with_source()
    assert registry.get("extra").factory() == "extra"
    assert "po_own" in registry and registry.get("extra")
    with pytest.raises(UnknownNameError, match="allowed: own, extra, po_own"):
        registry.get("nope")
    assert calls == [1]


@pytest.mark.parametrize("listing", [Registry.names, list, len, lambda r: "nope" in r])
def test_listing_loads_it_after_the_eager_entries(listing):
    registry, calls = registry_with_source()
    listing(registry)
    assert calls == [1]
    assert registry.names() == ["own", "extra", "po_own"]


def test_adding_a_name_the_source_holds_is_refused_before_it_ran_too():
    registry, calls = registry_with_source()
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("extra", lambda: "mine")
    assert calls == [1]
