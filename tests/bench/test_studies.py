"""The LR-sensitivity and LR-transfer studies: their metrics by hand, best-lr selection, end to end, resume, errors."""

import json
import math
import os

import pytest

from trainlab import cli
from trainlab.bench import studies, suite
from trainlab.bench.suite import BenchWorkload
from trainlab.config import ConfigError

# A transformer bench workload that trains in well under a second per trial (full batch of 60 pairs).
TINY_LM = BenchWorkload(
    name="tiny_modular_tf", summary="a+b mod 11, 1-layer transformer d 16",
    overrides=("workload=modular", "workload.p=11", "workload.train_frac=0.5", "model=transformer",
               "model.n_layer=1", "model.d_model=16", "model.n_head=2", "batch_size=0", "eval_every=5"),
    steps=10, metric="val_loss", higher_is_better=False, heldout=(), heldout_summary="",
    target=1.0, time_budget=60.0,
)


@pytest.fixture(autouse=True)
def tiny():
    if TINY_LM.name not in suite.WORKLOADS:
        suite.add(TINY_LM)


# ------------------------------------------------------------------------------------------- metrics


def test_lr_sensitivity_by_hand():
    # losses over 4 lrs, L0 = 4: the diverged (inf) and the worse-than-init (5) both count as L0.
    # mean(min(L, L0)) = (3 + 2 + 4 + 4) / 4 = 3.25; best = 2; sensitivity = 1.25.
    assert studies.lr_sensitivity([3.0, 2.0, math.inf, 5.0], 4.0) == pytest.approx(1.25)
    assert studies.lr_sensitivity([2.0, 2.0, 2.0], 4.0) == 0.0  # a flat curve
    assert studies.lr_sensitivity([math.nan, 2.5], 3.0) == pytest.approx((3.0 + 2.5) / 2 - 2.5)
    assert math.isnan(studies.lr_sensitivity([math.inf, math.nan], 3.0))


def test_sensitivity_grid_is_the_papers_range():
    lrs = studies.SENSITIVITY_LRS
    assert len(lrs) == 7 and lrs[0] == 3e-4 and lrs[-1] == 0.3
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert all(r == pytest.approx(math.sqrt(10), rel=0.01) for r in ratios)


def test_best_lr_is_the_parabola_vertex_in_log_lr():
    lrs = [1e-3 * 2**k for k in range(6)]
    true = 1e-3 * 2**2.3
    losses = [(math.log(lr) - math.log(true)) ** 2 + 1.0 for lr in lrs]
    best, bracketed = studies.best_lr(lrs, losses)
    assert bracketed and best == pytest.approx(true, rel=1e-9)
    # non-uniform spacing: still the exact vertex of a parabola in log lr
    lrs2 = [1e-3, 3e-3, 4e-3, 2e-2]
    losses2 = [(math.log(lr) - math.log(5e-3)) ** 2 for lr in lrs2]
    assert studies.best_lr(lrs2, losses2)[0] == pytest.approx(5e-3, rel=1e-9)


def test_best_lr_matches_the_prototype_on_a_factor_2_grid():
    lrs = [1e-4 * 2**k for k in range(6)]
    losses = [2.0, 1.5, 1.1, 1.0, 1.3, 1.9]
    y0, y1, y2 = losses[2:5]
    offset = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)  # benchmarks/lr_transfer.py's formula, in grid steps
    assert studies.best_lr(lrs, losses)[0] == pytest.approx(lrs[3] * 2**offset, rel=1e-12)


def test_best_lr_at_the_edge_or_next_to_a_divergence_is_the_grid_minimum():
    assert studies.best_lr([1e-3, 1e-2, 1e-1], [1.0, 2.0, 3.0]) == (1e-3, False)
    assert studies.best_lr([1e-3, 1e-2, 1e-1], [3.0, 1.0, math.inf]) == (1e-2, False)
    best, bracketed = studies.best_lr([1e-3, 1e-2], [math.inf, math.nan])
    assert math.isnan(best) and not bracketed


def test_width_exponent():
    widths = [32, 64, 128, 256]
    assert studies.width_exponent(widths, [0.1 * 32 / w for w in widths]) == pytest.approx(-1.0)
    assert studies.width_exponent(widths, [3e-3] * 4) == pytest.approx(0.0)


def test_parse_grids():
    assert studies.parse_grids(None, ["adamw"]) == {"adamw": list(studies.TRANSFER_GRIDS["adamw"])}
    assert studies.parse_grids("3e-3,1e-3,2e-3", ["adamw", "muon"]) == {"adamw": [1e-3, 2e-3, 3e-3],
                                                                         "muon": [1e-3, 2e-3, 3e-3]}
    grids = studies.parse_grids("muon=1e-2,2e-2,4e-2", ["adamw", "muon"])
    assert grids["muon"] == [1e-2, 2e-2, 4e-2] and grids["adamw"] == list(studies.TRANSFER_GRIDS["adamw"])
    for bad in ("1e-3,x", "sgd=1,2,3", "1e-3,2e-3", "-1,1,2"):
        with pytest.raises(ConfigError):
            studies.parse_grids(bad, ["adamw", "muon"])
    with pytest.raises(ConfigError):
        studies.parse_grids(None, ["lion"])  # no default grid


def test_summaries_from_records():
    rows = [{"kind": "sensitivity", "workload": "w", "variant": "base", "seed": s, "lr": lr, "initial_loss": 4.0,
             "final_loss": loss}
            for s, losses in ((0, (3.0, 2.0, None)), (1, (3.0, 2.5, 3.5)))
            for lr, loss in zip((1e-3, 1e-2, 1e-1), losses)]
    (g,) = studies.sensitivity_summary(rows)
    assert g["sensitivity_per_seed"] == pytest.approx([(3 + 2 + 4) / 3 - 2, (3 + 2.5 + 3.5) / 3 - 2.5])
    assert g["sensitivity"] == pytest.approx(sum(g["sensitivity_per_seed"]) / 2)
    assert g["mean_losses"] == [3.0, 2.25, None] and g["diverged"] == 1 and g["best_loss"] == 2.25

    rows = [{"kind": "transfer", "optimizer": "o", "width": w, "lr": lr, "seed": 0,
             "final_loss": (math.log(lr) - math.log(best)) ** 2 + 1}
            for w, best in ((32, 4e-3), (128, 1e-3)) for lr in (5e-4, 1e-3, 2e-3, 4e-3, 8e-3)]
    s = studies.transfer_summary(rows)["o"]
    assert s["by_width"][32]["best_lr"] == pytest.approx(4e-3) and s["by_width"][128]["best_lr"] == pytest.approx(1e-3)
    assert s["shift_log2"] == pytest.approx(-2.0) and s["exponent"] == pytest.approx(-1.0)
    assert s["spread"] == pytest.approx(4.0)


# --------------------------------------------------------------------------------------- end to end


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_sensitivity_end_to_end_then_resume(tmp_path, capsys):
    out = tmp_path / "sens"
    args = ["bench", "sensitivity", TINY_LM.name, "--lrs", "1e-3,3e-2,10", "--variants", "base,qk+zloss",
            "--steps", "10", "--workers", "0", "--out", str(out), "--quiet"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "LR sensitivity" in printed and "qk+zloss" in printed
    rows = _records(out)
    assert len(rows) == 6 and {r["variant"] for r in rows} == {"base", "qk+zloss"}
    qk = next(r for r in rows if r["variant"] == "qk+zloss")
    assert "model.qk_layernorm=true" in qk["overrides"] and "loss.z_loss=0.0001" in qk["overrides"]
    assert all(r["initial_loss"] == pytest.approx(math.log(11), abs=0.3) for r in rows)  # chance level at init
    assert all(r["final_loss"] is None or r["final_loss"] > 0 for r in rows)
    assert (out / "plots" / "loss_vs_lr.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "summary.md").read_text()
    assert "| workload | variant | LR sensitivity" in md and "lr 0.03" in md
    assert "data:image/png;base64," in (out / "report.html").read_text()
    info = json.loads((out / "study.json").read_text())
    assert info["kind"] == "sensitivity" and info["lrs"] == [1e-3, 3e-2, 10.0] and info["threads"] == 1

    # Resume: every trial finished, so none runs again (their directories are untouched).
    stamps = {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*/summary.json")}
    assert len(stamps) == 6
    assert cli.main([*args, "--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*/summary.json")} == stamps
    assert [r["final_loss"] for r in _records(out)] == [r["final_loss"] for r in rows]
    # Without --resume an existing study is refused in one line.
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--resume" in err and len(err.splitlines()) == 1
    # A killed trial (no summary.json) is rerun on resume, the others are not.
    victim = sorted(stamps)[0]
    victim.unlink()
    assert cli.main([*args, "--resume"]) == 0
    assert victim.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != victim)
    # report DIR redraws from the records alone
    (out / "summary.md").unlink()
    assert cli.main(["bench", "sensitivity", "report", str(out)]) == 0
    assert (out / "summary.md").is_file()


def test_transfer_end_to_end(tmp_path, capsys):
    out = tmp_path / "xfer"
    assert cli.main(["bench", "transfer", "--optimizers", "adamw", "--widths", "8,16", "--lrs", "1e-3,1e-2,1e-1",
                     "--steps", "10", "--depth", "1", "--workers", "0", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "best lr, width 8" in printed and "best lr, width 16" in printed
    rows = _records(out)
    assert len(rows) == 6 and {(r["width"], r["lr"]) for r in rows} == {(w, lr) for w in (8, 16)
                                                                         for lr in (1e-3, 1e-2, 1e-1)}
    assert all(isinstance(r["final_loss"], float) and r["final_loss"] > 0 for r in rows)
    summary = studies.transfer_summary(rows)["adamw"]
    for w in (8, 16):  # the reported best lr is the selection rule applied to the recorded losses
        e = summary["by_width"][w]
        assert e["best_lr"] == pytest.approx(studies.best_lr(e["lrs"], [x or math.inf for x in e["losses"]])[0])
    for name in ("loss_vs_lr.png", "best_lr_vs_width.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert "shift 8→16 (log2)" in (out / "summary.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["sensitivity", "--variants", "base,nope"], "--variants"),
    (["sensitivity", "no_such_workload"], "unknown workload"),
    (["sensitivity", "--lrs", "1e-3"], "at least two"),
    (["sensitivity", "--seeds", "0"], "--seeds"),
    (["sensitivity", "--set", "grad_clip"], "KEY=VALUE"),
    (["sensitivity", "mnist1d_mlp"], "qk_layernorm"),  # an MLP has no qk-layernorm: refused before training
    (["transfer", "--widths", "64"], "at least two widths"),
    (["transfer", "--optimizers", "nosuch"], "unknown optimizer"),
    (["transfer", "--lrs", "adamw=1e-3,x"], "--lrs"),
    (["transfer", "report", "/no/such/dir"], "report"),
])
def test_mistakes_exit_2_with_one_line(args, message, tmp_path, capsys):
    assert cli.main(["bench", *args, "--out", str(tmp_path / "o"), "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_help_has_examples(capsys):
    for kind in ("sensitivity", "transfer"):
        with pytest.raises(SystemExit) as done:
            cli.main(["bench", kind, "--help"])
        assert done.value.code == 0
        assert f"trainlab bench {kind}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "bench sensitivity" in text and "bench transfer" in text


def test_lr_transfer_script_is_a_wrapper():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "benchmarks" / "lr_transfer.py"
    spec = importlib.util.spec_from_file_location("lr_transfer_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.best_lr is studies.best_lr and module.final_loss is studies.tail_train_loss
    assert os.path.getsize(path) < 6000


def test_study_summary_and_page_escape_what_users_gave(tmp_path):
    # --set words and the command are the user's: no raw HTML, no broken line in summary.md or report.html
    out = tmp_path / "sens"
    out.mkdir()
    evil = "name=<script>alert(1)</script>|x\ny"
    info = {"kind": "sensitivity", "extra": [evil], "command": f"trainlab bench sensitivity --set '{evil}'",
            "steps": 10, "seeds": 1, "workers": 0, "threads": 1, "date": "d", "machine": "m"}
    (out / "study.json").write_text(json.dumps(info))
    rows = [{"kind": "sensitivity", "workload": "w", "variant": "base", "seed": 0, "lr": lr, "initial_loss": 4.0,
             "final_loss": loss} for lr, loss in ((1e-3, 3.0), (1e-2, 2.0), (1e-1, None))]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    studies.write_report(out)
    summary = (out / "summary.md").read_text()
    assert "extra overrides: name=&lt;script>alert(1)&lt;/script>\\|x y" in summary
    assert "Command: `trainlab bench sensitivity --set 'name=<script>alert(1)</script>|x y'`\n" in summary  # a code span
    assert "<script" not in (out / "report.html").read_text()
