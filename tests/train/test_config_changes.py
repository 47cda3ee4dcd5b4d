"""What a resume compares: a key or a section added to trainlab since the run was saved is not a change (the run
trained with that key's default, which is what the resumed config holds); a changed value is."""

from trainlab.train.state import config_changes


def test_keys_and_sections_added_since_the_run_are_not_changes_but_changed_values_are():
    saved = {"dist": {"strategy": "ddp", "sync_every": 1}, "seed": 0}
    now = {"dist": {"strategy": "ddp", "sync_every": 1, "graph": "ring"}, "seed": 0, "fed": {"strategy": "none"}}
    assert config_changes(saved, now) == []
    assert config_changes(saved, {**now, "dist": {**now["dist"], "sync_every": 2}}) == [("dist.sync_every", 1, 2)]
    assert config_changes(saved, {**now, "seed": 3}) == [("seed", 0, 3)]
