"""The test tree's layout rule: test folders have no __init__.py, so pytest imports every test file by its bare
name, and two files of one name in different folders break collection (and multi-process tests that re-import
their module by name in the workers) -- as tests/federated/test_strategies.py once did to
tests/distributed/test_strategies.py."""

from collections import Counter
from pathlib import Path


def test_every_test_module_name_is_unique_across_folders():
    tests = Path(__file__).resolve().parent
    names = Counter(path.name for path in tests.rglob("*.py") if path.name != "conftest.py")
    assert [name for name, n in names.items() if n > 1] == []
