"""The optimizer registry as data: names, provenance, options, pytorch-optimizer's entries, ``trainlab list``."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import subprocess
import sys

import pytest
import pytorch_optimizer
import torch
import yaml

from trainlab import optim
from trainlab.cli import main
from trainlab.config import ConfigError, coerce, fields_of, to_plain
from trainlab.optim import OPTIMIZERS, external

NAMES = optim.names()
PO_NAMES = [name.lower() for name in pytorch_optimizer.get_supported_optimizers()]


def po_entries():
    return [e for e in OPTIMIZERS if str(e.meta.get("source", "")).startswith("pytorch_optimizer.")]


def test_names_are_unique_lower_case_identifiers():
    assert len(NAMES) == len(set(NAMES))
    bad = [name for name in NAMES if not re.fullmatch(r"[a-z][a-z0-9_]*", name)]
    assert not bad


def test_every_entry_says_where_it_comes_from():
    for entry in OPTIMIZERS:
        source, own = entry.meta.get("source"), entry.meta.get("own")
        assert isinstance(source, str) and source, entry.name
        assert isinstance(own, bool), entry.name
        assert entry.summary, entry.name
        if source.startswith(("torch.optim", "pytorch_optimizer", "schedulefree")):
            assert not own, f"{entry.name}: {source} is not trainlab's own implementation"
        if own:
            assert source.startswith("trainlab"), entry.name


def _cli_text(value):
    """How a user writes ``value`` as ``optimizer.KEY=...`` (None for values with no flat spelling)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, str)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return ",".join(repr(v) for v in value)
    return None


@pytest.mark.parametrize("name", NAMES)
def test_defaults_validate_serialise_and_can_be_typed(name):
    """Every option's default passes validation, saves to YAML (the run directory's config) and can be typed."""
    opts = optim.resolve_options(name, {})
    yaml.safe_load(yaml.safe_dump(to_plain(opts)))
    for key, f in fields_of(type(opts)).items():
        default = getattr(opts, key)
        text = _cli_text(default)
        if text is not None:
            assert coerce(key, text, f.type) == default, f"optimizer.{key}={text}"


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_names_the_key(name):
    with pytest.raises(ConfigError) as err:
        optim.resolve_options(name, {"no_such_option": 1})
    assert err.value.key == "optimizer.no_such_option"
    assert "unknown key" in str(err.value) and "allowed:" in str(err.value)


def test_build_over_a_module_or_its_parameters():
    for name in ("adamw", "adabelief"):
        model = torch.nn.Linear(3, 2)
        by_module, by_params = optim.build(name, model), optim.build(name, model.parameters())
        assert type(by_module) is type(by_params)
        for a, b in zip(by_module.param_groups, by_params.param_groups):
            assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]] == [id(p) for p in model.parameters()]


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(4, 6)
        self.head = torch.nn.Linear(6, 2, bias=False)


def test_muon_family_takes_the_model_and_splits_it():
    assert OPTIMIZERS.get("adamuon").meta["needs_model"]
    net = _Net()
    opt = optim.build("adamuon", net, lr=0.01)
    muon, rest = ([p for g in opt.param_groups if g["use_muon"] is flag for p in g["params"]] for flag in (True, False))
    assert [id(p) for p in muon] == [id(net.hidden.weight)]  # hidden matrices are orthogonalised
    assert {id(p) for p in rest} == {id(net.hidden.bias), id(net.head.weight)}  # biases and the head are not
    opt = optim.build("adamuon", list(net.parameters()))  # plain tensors: split by ndim
    assert [len(g["params"]) for g in opt.param_groups] == [2, 1]


def test_pytorch_optimizer_entries():
    entries = po_entries()
    assert len(entries) >= 100  # a typing regression would silently drop many
    for entry in entries:
        upstream = entry.meta["upstream_name"]
        cls = pytorch_optimizer.load_optimizer(upstream)
        assert entry.meta["source"] == f"pytorch_optimizer.{cls.__name__}" and entry.meta["own"] is False
        assert entry.name in (upstream, f"{external.PREFIX}{upstream}")
        adapted = entry.meta.get("needs_model") or upstream in external._MATRICES_ONLY
        assert entry.factory is cls or adapted, entry.name
        accepted = set(inspect.signature(cls.__init__).parameters)
        options = {f.name for f in dataclasses.fields(entry.options)}
        assert options <= accepted, entry.name
        assert not options & set(entry.meta.get("fixed", ())), entry.name
        assert set(entry.meta.get("fixed", ())) <= accepted, entry.name


def test_every_pytorch_optimizer_name_is_registered_or_skipped_with_a_reason():
    registered = {e.meta["upstream_name"] for e in po_entries()}
    assert set(PO_NAMES) == registered | set(external.SKIPPED)
    assert not registered & set(external.SKIPPED)
    for name, reason in external.SKIPPED.items():
        assert isinstance(reason, str) and len(reason) > 10, name


def test_shadowed_names_are_reachable_as_po_names():
    shadowed = 0
    for entry in po_entries():
        upstream = entry.meta["upstream_name"]
        if entry.name == upstream:
            continue
        shadowed += 1
        keeper = OPTIMIZERS.get(upstream)  # the existing entry keeps the plain name
        assert not keeper.meta["source"].startswith("pytorch_optimizer."), upstream
        assert entry.meta["shadowed_by"] == keeper.meta["source"]
    # torch.optim registers first, so these collide whatever else is installed
    for name in ("adadelta", "adafactor", "adamax", "asgd", "radam"):
        assert OPTIMIZERS.get(name).meta["source"].startswith("torch.optim")
        assert OPTIMIZERS.get(f"po_{name}").meta["upstream_name"] == name
    assert shadowed >= 5
    for entry in OPTIMIZERS:  # and no plain name that pytorch_optimizer's own copy could take is lost
        if entry.meta.get("own") and entry.name in PO_NAMES and entry.name not in external.SKIPPED:
            assert f"po_{entry.name}" in OPTIMIZERS, entry.name


def test_lazy_pytorch_optimizer_source_gives_the_names_eager_registration_gave():
    """pytorch_optimizer's entries come in one block after torch.optim's and trainlab's own (as when they were
    registered at import), named by external.py's policy: upstream order, ``po_`` for a name already taken."""
    names = optim.names()
    po = [e.name for e in po_entries()]
    start = names.index(po[0])
    eager = names[:start]
    assert names[start:start + len(po)] == po
    taken, expected = set(eager), []
    for name in PO_NAMES:
        if name not in external.SKIPPED:
            expected.append(name if name not in taken else f"{external.PREFIX}{name}")
            taken.add(expected[-1])
    assert po == expected
    sources = [OPTIMIZERS.get(name).meta["source"] for name in eager]
    assert sources[0].startswith("torch.optim") and not any(s.startswith("torch.optim") for s in sources[12:])
    assert {"lion", "lamb", "diffgrad", "muon", "dualized", "adamw_schedulefree"} <= set(eager)
    assert {"po_lion", "po_lamb", "po_diffgrad", "po_muon", "po_radam", "adan"} <= set(po)


def test_own_names_do_not_import_pytorch_optimizer():
    code = ("import sys, torch\n"
            "from trainlab import optim\n"
            "params = [torch.zeros(2, requires_grad=True)]\n"
            "optim.build('adamw', params); optim.build('lion', params); assert 'muon' in optim.OPTIMIZERS\n"
            "assert 'pytorch_optimizer' not in sys.modules\n"
            "optim.build('adan', params)\n"
            "assert 'pytorch_optimizer' in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr


def test_names_that_are_torch_classes_are_not_registered_twice():
    for name in ("adam", "adamw", "sgd", "rmsprop", "nadam"):
        assert "torch.optim" in external.SKIPPED[name] and f"po_{name}" not in OPTIMIZERS


def test_list_optimizers(capsys):
    assert main(["list", "optimizers"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["NAME", "SOURCE", "OWN", "SUMMARY"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    names = optim.names()  # now: other tests in this process may have registered file submissions since import
    assert set(rows) == set(names)
    assert rows["adamw"][1:3] == ["torch.optim", "-"] and rows["po_radam"][1] == "pytorch_optimizer"
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) ([\w.]+)", lines[-1].split(":", 1)[1])}
    assert lines[-1].startswith(f"{len(names)} optimizers:") and sum(counts.values()) == len(names)
    assert counts["pytorch_optimizer"] == len(po_entries())
    for row in rows.values():
        assert row[1] in counts and row[2] in ("yes", "-")

    assert main(["list", "optimizers", "--options"]) == 0
    out = capsys.readouterr().out
    assert "    optimizer.lr = 0.001  (float)" in out
    assert "(left at the upstream default: momentum_dtype)" in out  # po_adafactor's torch.dtype argument
