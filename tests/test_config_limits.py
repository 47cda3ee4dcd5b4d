"""Inputs that ask for much with little: bounded YAML, bounded file reads, bounded integers, bounded messages.

Each test builds an input that would cost minutes, gigabytes or a hang without its limit, and checks the one
line that refuses it instead. Nothing here measures time: an input that escaped its limit would not finish.
"""

from __future__ import annotations

import errno
import os

import pytest

from trainlab.cli import failure_line
from trainlab.config import (MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_VALUES, SEED_MAX, ConfigError, build_options,
                             coerce, load_yaml_file, parse_yaml, read_user_bytes)
from trainlab.errors import DataError, RunError, quote_path, shorten
from trainlab.train.config import TrainOptions, load_yaml


def config_error(message: str) -> ConfigError:
    return ConfigError("", message)


def parse(text: str):
    return parse_yaml(text, "test.yaml", config_error)


def alias_bomb(width: int, levels: int) -> str:
    """A flow list whose last anchor expands to ``width ** levels`` scalars (the file is a few hundred bytes)."""
    items = [f"&a0 [{', '.join(['x'] * width)}]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "steps: [" + ", ".join(items) + "]\n"


# ------------------------------------------------------------------------------------------------ YAML


def test_an_alias_bomb_is_refused_before_anything_walks_it():
    text = alias_bomb(10, 9)  # 10^9 scalars once expanded
    assert len(text) < 500
    with pytest.raises(ConfigError, match=f"more than {MAX_YAML_VALUES:,} values once aliases are expanded"):
        parse(text)


def test_aliases_within_the_budget_are_read_as_before():
    data = parse("base: &lr {lr: 0.1}\noptimizer: {<<: *lr, name: sgd}\nmilestones: &m [1, 2]\nagain: *m\n")
    assert data["optimizer"] == {"lr": 0.1, "name": "sgd"} and data["again"] == [1, 2]


@pytest.mark.parametrize("text", [
    "steps: " + "[" * 100_000 + "]" * 100_000,  # Python's recursion limit, without the depth limit
    "steps: " + "{a: " * 5000 + "1" + "}" * 5000,
    "".join(f"{'  ' * i}a{i}:\n" for i in range(MAX_YAML_DEPTH + 1)) + "  " * (MAX_YAML_DEPTH + 1) + "x: 1\n",
    # each anchor nests the one before: shallow in the text, deep once expanded
    "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, MAX_YAML_DEPTH + 5)),
], ids=["flow lists", "flow mappings", "block mappings", "alias chain"])
def test_deep_nesting_is_refused(text):
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_YAML_DEPTH} levels"):
        parse(text)


def test_nesting_up_to_the_limit_is_read():
    lists = MAX_YAML_DEPTH - 1  # the top-level mapping is one level
    expected: list = []
    for _ in range(lists - 1):
        expected = [expected]
    assert parse("a: " + "[" * lists + "]" * lists) == {"a": expected}


def test_a_long_flat_file_is_refused_at_the_limit_not_at_its_end():
    with pytest.raises(ConfigError, match=f"more than {MAX_YAML_VALUES:,} values"):
        parse("a: [" + ", ".join(["1"] * (MAX_YAML_VALUES + 1)) + "]\n")


def test_an_alias_inside_its_own_anchor_is_refused():
    with pytest.raises(ConfigError, match=r"the alias \*a is inside its own anchor"):
        parse("a: &a [1, *a]\n")


@pytest.mark.parametrize("value, shown", [
    ("!!python/object/apply:os.system ['echo hi']", "'!!python/object/apply:os.system'"),
    ("!!python/name:os.system", "'!!python/name:os.system'"),
    ("!!int abc", "'!!int'"),  # would raise ValueError while constructing
    ("!!timestamp abc", "'!!timestamp'"),  # would raise AttributeError
    ("!!bool abc", "'!!bool'"),  # would raise KeyError
    ("!custom 3", "'!custom'"),
])
def test_tags_are_refused_by_name(value, shown):
    with pytest.raises(ConfigError, match="is not allowed; write plain values") as err:
        parse(f"steps: {value}\n")
    assert f"the tag {shown}" in str(err.value) and "not valid YAML" not in str(err.value)


def test_dates_are_plain_text_and_long_integers_are_refused():
    assert parse("name: 2024-02-30\nother: 2024-01-01\n") == {"name": "2024-02-30", "other": "2024-01-01"}
    assert parse("seed: 12345678901234567890\n") == {"seed": 12345678901234567890}  # range: coerce's job
    with pytest.raises(ConfigError, match="an integer of 5,000 digits"):
        parse("seed: " + "9" * 5000 + "\n")  # int() of it raises ValueError


# ------------------------------------------------------------------------------------------------ files


def test_special_files_are_refused_without_reading_them(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)  # opening it to read would block until a writer came
    with pytest.raises(ConfigError, match=r"config file '.*config.yaml' is a FIFO \(named pipe\), not a regular"):
        load_yaml(fifo)
    with pytest.raises(ConfigError, match="'/dev/zero' is a device, not a regular file"):
        load_yaml("/dev/zero")
    with pytest.raises(ConfigError, match="is a directory, not a regular file"):
        load_yaml(tmp_path)
    with pytest.raises(DataError, match="is a FIFO"):
        read_user_bytes(fifo, "file", DataError, 1000)


def test_a_file_over_the_limit_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * MAX_YAML_BYTES + "\nsteps: 3\n")
    with pytest.raises(ConfigError, match=f"is larger than {MAX_YAML_BYTES:,} bytes"):
        load_yaml(path)


def test_unreadable_and_misnamed_files_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read .File name too long."):
        load_yaml(tmp_path / ("x" * 300 + ".yaml"))
    with pytest.raises(ConfigError, match="cannot be read .Not a directory."):
        load_yaml(__file__ + "/x.yaml")  # a path through a regular file
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(invalid byte at offset 9\)"):
        load_yaml_file(bad, "config file", config_error)


def test_a_newline_in_a_path_stays_inside_the_one_line(tmp_path):
    path = tmp_path / "a\nb.yaml"
    path.write_text("steps: [3\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    assert "\n" not in str(err.value) and "a\\nb.yaml" in str(err.value)


def test_reading_stops_at_the_limit(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes(b"x" * 1000)
    assert read_user_bytes(path, "file", DataError, 10) == b"x" * 10
    assert len(read_user_bytes(path, "file", DataError, None)) == 1000


# ------------------------------------------------------------------------------------------------ values


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, "9223372036854775808", "9" * 5000, "-" + "9" * 30,
                                   1e19, "1e300"])
def test_integers_beyond_64_bits_are_refused(value):
    with pytest.raises(ConfigError, match=r"steps: must be between -2\*\*63 and 2\*\*63 - 1") as err:
        coerce("steps", value, int)
    assert len(str(err.value)) < 200


def test_integers_at_the_64_bit_edges_are_read():
    assert coerce("k", 2**63 - 1, int) == 2**63 - 1 and coerce("k", str(-(2**63)), int) == -(2**63)
    assert coerce("k", "1_000", int) == 1000 and coerce("k", "1e6", int) == 10**6


def test_seeds_fit_the_generators():
    assert build_options(TrainOptions, {"seed": SEED_MAX}).seed == SEED_MAX
    for seed in (SEED_MAX + 1, 2**63, -1):
        with pytest.raises(ConfigError, match="seed: must be"):
            build_options(TrainOptions, {"seed": seed})


def test_a_float_option_refuses_an_integer_beyond_floats():
    with pytest.raises(ConfigError, match="expected a finite number"):
        coerce("optimizer.lr", 10**400, float)


def test_messages_never_build_the_whole_repr():
    bomb = [1] * 10
    for _ in range(9):
        bomb = [bomb] * 10  # 10^10 items once walked
    with pytest.raises(ConfigError) as err:
        coerce("steps", bomb, int)
    assert len(str(err.value)) < 200
    assert shorten(10**10_000) == "<an integer of about 10,001 digits>"
    cut = shorten("x" * 10**6, 20)
    assert len(cut) <= 20 and cut.startswith("'xxx") and "..." in cut and cut.endswith("xxx'")
    assert quote_path("a\nb") == "'a\\nb'"
    assert "\n" not in str(ConfigError("a\nb" * 100, "unknown key"))


# ------------------------------------------------------------------------------------------------ the boundary


@pytest.mark.parametrize("err, words", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device (ENOSPC); free some space"),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), "(EDQUOT); free some space"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS)), "Read-only file system (EROFS); write elsewhere"),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), "Permission denied (EACCES)"),
    (OSError(errno.EMFILE, os.strerror(errno.EMFILE)), "(EMFILE); raise the limit of open files"),
    (OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), "a\nb"), "'a\\nb': File name too long"),
    (MemoryError(), "out of memory"),
    (RunError("two\nlines"), "trainlab: error: two"),
])
def test_expected_failures_are_one_line(err, words):
    line = failure_line(err)
    assert line is not None and words in line and "\n" not in line


@pytest.mark.parametrize("err", [OSError(errno.EINVAL, "Invalid argument"), OSError("no errno"), ValueError("bug"),
                                 RecursionError(), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid")])
def test_anything_else_keeps_its_traceback(err):
    assert failure_line(err) is None
