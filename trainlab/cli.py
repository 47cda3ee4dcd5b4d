"""The ``trainlab`` command line: parse, build from registries, call. Nothing else lives here.

Start-up is part of the interface: at the top this module imports only the standard library, the bare
``trainlab`` package and :mod:`trainlab.errors`; each command imports what it uses when it runs (``trainlab
report`` no torch at all, ``trainlab list workloads`` not the optimizers), so ``--help`` and the quick commands
answer at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

import trainlab
from trainlab.errors import ConfigError

if TYPE_CHECKING:
    from trainlab.registry import Registry

EXIT_USAGE = 2

RUN_EXAMPLES = """\
examples:
  trainlab run                                   # a+b mod 97 on an MLP: watch it grok (about a minute)
  trainlab run optimizer.weight_decay=0 --out runs/no-wd    # the same without weight decay
  trainlab run workload=mnist1d model=cnn1d optimizer.lr=1e-2 optimizer.weight_decay=0
  trainlab run workload=charlm workload.path=book.txt steps=500
  trainlab run my_config.yaml optimizer=sgd optimizer.lr=0.1 optimizer.momentum=0.9
  trainlab run --resume runs/modular-adamw-20260101-120000
  torchrun --nproc_per_node=2 -m trainlab run batch_size=512   # data-parallel (DDP, gloo on CPU)
  torchrun --nproc_per_node=2 -m trainlab run dist.strategy=fsdp   # or zero1, diloco, streaming_diloco
  torchrun --max-restarts=3 --nproc_per_node=2 -m trainlab run checkpoint_every=100 --out runs/x --auto-resume

keys: workload, model, optimizer, schedule name a component (its defaults apply);
      workload.KEY, model.KEY, optimizer.KEY, schedule.KEY set a component's options;
      top level: steps, seed, batch_size (0 = full batch), eval_every, eval_examples, checkpoint_every,
      grad_clip, threshold, stop_at_target, target_metric, target, time_budget, device (auto|cpu|cuda|mps),
      dtype (float32|float64), autocast (auto|off|bf16), compile, tensorboard, trace, name,
      init_from (start from a run's weights), threads (0 = auto);
      sections loss.KEY, param.KEY, probes.KEY, data.KEY (data diets: data=0.5 data.scores=CSV), continual.KEY,
      prune.KEY (prune=magnitude|neurons), batch.KEY (batch.lr_rule=linear|sqrt, batch.steps_rule=epochs),
      dist.KEY (dist=ddp|zero1|fsdp|diloco|streaming_diloco|gradient_coding|gossip),
      fed.KEY (fed=fedavg|async_fedavg|fedbuff|fedfix|fedcompass: federated clients on a simulated clock).
      `trainlab list workloads --options` shows every component's options and defaults.
"""

LIST_EXAMPLES = """\
examples:
  trainlab list workloads
  trainlab list optimizers
  trainlab list models --options
  trainlab list methods --options      # continual learning: each method's paper and continual.* options
  trainlab list pruning --options      # pruning methods and the prune.* options
  trainlab list federated --options    # federated strategies, client rules, partitions, speeds, fed.* options
  trainlab list sections --options     # every section's keys (loss.*, probes.*, data.*, batch.*, ...) and defaults
"""

LAW_EXAMPLES = """\
examples:
  trainlab run workload=charlm schedule=cosine --out runs/cos
  trainlab run workload=charlm schedule=wsd --out runs/wsd
  trainlab law runs/cos runs/wsd --out law.png      # fit on cosine, predict the WSD run's curve
  trainlab law runs/cos --predict schedule=wsd schedule.decay_frac=0.2 --predict schedule=constant
                                                    # predict schedules nobody has run (same steps and lr
                                                    # as the fitted run unless steps=N / lr=X is given)
"""

EXPORT_EXAMPLES = """\
examples:
  trainlab export runs/grok                       # runs/grok/model.safetensors
  trainlab export runs/grok --out grok.safetensors
  python -c "import trainlab; run = trainlab.load_run('runs/grok'); print(run.model)"   # the same model in Python
"""

REPORT_EXAMPLES = """\
examples:
  trainlab report runs/grok                       # (re)write runs/grok/report.html
  trainlab report runs/grok runs/no-wd --out compare.html
"""

BENCH_EXAMPLES = """\
examples:
  trainlab bench --submission adamw                 # the small suite: adamw vs the NAdamW baseline
  trainlab bench mnist1d_cnn charlm --submission lion --submission "optimizer=sgd optimizer.lr=0.1 \\
      optimizer.momentum=0.9 optimizer.nesterov=true schedule=cosine schedule.warmup_frac=0.02" --seeds 3
  trainlab bench --submission "adamw optimizer.lr=loguniform(1e-4,1e-2) schedule=cosine" \\
      --ruleset external --trials 5 --studies 3     # tune on a search space: median of per-study best
  trainlab bench --submission my_algo.py --ruleset self    # a Python-file submission, no tuning, 3x budget
  trainlab bench --submission adamw --out results/small --resume   # continue an interrupted bench
  trainlab bench set-targets --seeds 5              # rerun the tuned baselines: results/targets/targets.json
  trainlab bench --submission lion --targets results/targets/targets.json   # score against those targets
  trainlab bench report results/small               # rewrite leaderboard.md, plots and report.html
  trainlab bench --submission examples/autolrs_submission.py --ruleset self   # AutoLRS: its own lr per stage
  trainlab bench sensitivity charlm                 # study: final loss vs lr, qk-layernorm / z-loss (--help)
  trainlab bench transfer --widths 32,64,128,256    # study: best lr vs width for adamw, muon, dualized (--help)

SUITE|WORKLOAD: small (default: mnist1d_mlp mnist1d_cnn modular_mlp charlm sparse_parity) or workload names.
SPEC: a preset (nadamw = baseline), an optimizer name and key=value words (optimizer.KEY, schedule,
      schedule.KEY, schedule.warmup_frac, grad_clip, batch_size, loss.z_loss, name=LABEL; a value
      loguniform(lo,hi), uniform(lo,hi) or choice(a,b) is a search-space dimension), a .yaml or a .py file.
Only training time counts; the score is the time of the first evaluation meeting the target.
"""


SENSITIVITY_EXAMPLES = """\
examples:
  trainlab bench sensitivity                        # charlm, 4 variants x 7 lrs (3e-4..3e-1), 600 steps
  trainlab bench sensitivity charlm modular_grok --variants base,qk+zloss --seeds 2 --workers 2
  trainlab bench sensitivity --lrs 1e-3,1e-2,1e-1 --steps 200 --out results/sens-quick
  trainlab bench sensitivity --set grad_clip=1 --out results/sens-clip     # extra overrides for every trial
  trainlab bench sensitivity --out results/sensitivity --resume            # continue: finished trials stay
  trainlab bench sensitivity report results/sensitivity                    # redraw from the records alone

Variants: base (AdamW, 5% warm-up, cosine), qk (model.qk_layernorm=true), zloss (loss.z_loss=1e-4), qk+zloss.
LR sensitivity (Wortsman et al. 2023, arXiv:2309.14322): mean over the log-spaced lr grid of
min(final loss, L0) - best final loss, L0 = loss at initialisation; 0 = flat loss-vs-lr curve.
Writes study.json, results.jsonl, summary.md, plots/loss_vs_lr.png and report.html into --out.
"""

TRANSFER_EXAMPLES = """\
examples:
  trainlab bench transfer                           # adamw, muon, dualized; MLP widths 32..256 on mnist1d
  trainlab bench transfer --optimizers adamw,dualized --widths 64,128,256,512 --steps 300 --workers 2
  trainlab bench transfer --lrs "adamw=1e-3,2e-3,4e-3,8e-3;muon=1e-2,2e-2,4e-2"   # per-optimizer grids
  trainlab bench transfer --out results/transfer --resume                  # continue: finished trials stay
  trainlab bench transfer report results/transfer                          # redraw from the records alone

Final loss: mean training loss over the last 10% of steps; best lr: parabola through the grid minimum and
its neighbours in log lr. Shift: log2(best lr at the widest / narrowest width), 0 = perfect transfer.
Writes study.json, results.jsonl, summary.md, plots/loss_vs_lr.png, plots/best_lr_vs_width.png, report.html.
"""

STUDIES = ("sensitivity", "transfer")


class Parser(argparse.ArgumentParser):
    """argparse with trainlab's error format: one line on stderr naming the mistake and where help is, exit 2
    (argparse's own prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"trainlab: error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_study_parser(kind: str) -> argparse.ArgumentParser:
    """The parser of ``trainlab bench sensitivity`` / ``trainlab bench transfer`` (see trainlab.bench.studies)."""
    fmt = argparse.RawDescriptionHelpFormatter
    if kind == "sensitivity":
        p = Parser(
            prog="trainlab bench sensitivity", epilog=SENSITIVITY_EXAMPLES, formatter_class=fmt,
            description="LR-sensitivity study (Wortsman et al. 2023): train each workload and variant (qk-layernorm, "
                        "z-loss) over a log grid of learning rates and report final loss vs lr and the LR sensitivity.")
        p.add_argument("names", nargs="*", metavar="WORKLOAD",
                       help="bench workloads with a transformer (default: charlm); or: report DIR")
        p.add_argument("--lrs", metavar="LR,LR,...", help="learning rates (default: 7 log-spaced from 3e-4 to 3e-1)")
        p.add_argument("--variants", metavar="V,V,...", default="base,qk,zloss,qk+zloss",
                       help="among base, qk, zloss, qk+zloss (default: all four)")
        p.add_argument("--steps", type=int, default=600, metavar="N", help="training steps per trial (default 600)")
    else:
        p = Parser(
            prog="trainlab bench transfer", epilog=TRANSFER_EXAMPLES, formatter_class=fmt,
            description="LR-transfer study: best learning rate vs width of an MLP on mnist1d for each optimizer "
                        "(default: adamw, muon and the modular-dualized optimizer).")
        p.add_argument("names", nargs="*", metavar="report DIR", help="`report DIR` redraws a finished study")
        p.add_argument("--optimizers", default="adamw,muon,dualized", metavar="NAME,...",
                       help="registry optimizers (default: adamw,muon,dualized)")
        p.add_argument("--widths", default="32,64,128,256", metavar="W,W,...", help="MLP widths (default 32,64,128,256)")
        p.add_argument("--lrs", metavar="GRID", help="LR,LR,... for all optimizers, or NAME=LR,LR;NAME=... "
                       "(default: 7 points a factor 2 apart per optimizer)")
        p.add_argument("--steps", type=int, default=300, metavar="N", help="training steps per trial (default 300)")
        p.add_argument("--depth", type=int, default=3, metavar="D", help="hidden layers of the MLP (default 3)")
        p.add_argument("--batch-size", type=int, default=128, metavar="B", help="batch size (default 128)")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds 0..N-1 per point (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="extra",
                   help="an extra `trainlab run` override for every trial (repeatable), e.g. grad_clip=1")
    p.add_argument("--workers", type=int, metavar="W", help="parallel worker processes (default: the CPU cores; "
                   "0 = in this process)")
    p.add_argument("--threads", type=int, default=1, metavar="T", help="torch threads per trial (default 1)")
    p.add_argument("--out", metavar="DIR", help=f"results directory (default: results/{kind})")
    p.add_argument("--resume", action="store_true", help="continue the study in --out: finished trials are kept")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def cmd_bench_study(kind: str, ns: argparse.Namespace) -> int:
    from trainlab.bench import studies

    if ns.names and ns.names[0] == "report":
        if len(ns.names) != 2 or not Path(ns.names[1]).is_dir():
            raise ConfigError(f"bench {kind} report", f"expected one results directory: trainlab bench {kind} report DIR")
        result = studies.write_report(Path(ns.names[1]))
    elif kind == "sensitivity":
        variants = [v.strip() for v in ns.variants.split(",") if v.strip()]
        result = studies.run_sensitivity(ns.names, lrs=ns.lrs or studies.SENSITIVITY_LRS, variants=variants,
                                         seeds=ns.seeds, steps=ns.steps, extra=ns.extra, workers=ns.workers,
                                         threads=ns.threads, out=ns.out or "results/sensitivity", resume=ns.resume,
                                         progress=not ns.quiet)
    else:
        if ns.names:
            raise ConfigError("bench transfer", f"unexpected argument {ns.names[0]!r} (only `report DIR`)")
        optimizers = [o.strip() for o in ns.optimizers.split(",") if o.strip()]
        result = studies.run_transfer(optimizers, widths=ns.widths, lrs=ns.lrs, seeds=ns.seeds, steps=ns.steps,
                                      depth=ns.depth, batch_size=ns.batch_size, extra=ns.extra, workers=ns.workers,
                                      threads=ns.threads, out=ns.out or "results/transfer", resume=ns.resume,
                                      progress=not ns.quiet)
    print(result.text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="trainlab",
        description="Train deep networks with the algorithms of the training literature, watch their dynamics, "
                    "rank them.",
        epilog="Run `trainlab COMMAND --help` for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"trainlab {trainlab.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    fmt = argparse.RawDescriptionHelpFormatter
    run = sub.add_parser("run", help="train one configuration", description="Train one configuration and write a "
                         "run directory (config, metrics.jsonl, events, summary, checkpoints, plots, report.html).",
                         epilog=RUN_EXAMPLES, formatter_class=fmt)
    run.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
                     help="an optional YAML config file, then dotted key=value overrides")
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/WORKLOAD-OPTIMIZER-TIME)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    run.add_argument("--auto-resume", action="store_true",
                     help="if --out DIR already holds a run of this same config, continue it from its newest "
                          "checkpoint (start afresh if it has none) instead of refusing; with torchrun "
                          "--max-restarts=K a killed worker's restart loses at most checkpoint_every steps")
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary (errors still print)")
    run.add_argument("--no-report", action="store_true", help="skip plots and report.html at the end")

    lst = sub.add_parser("list", help="list registered components", epilog=LIST_EXAMPLES, formatter_class=fmt,
                         description="List the registered workloads, models, optimizers, schedules, probes, "
                                     "distributed strategies, continual-learning methods, pruning methods, or the "
                                     "config sections (loss, param, probes, data, batch, prune, ...) and their keys.")
    lst.add_argument("what", choices=["workloads", "models", "optimizers", "schedules", "probes", "strategies",
                                      "methods", "pruning", "federated", "sections"])
    lst.add_argument("--options", action="store_true", help="also show each component's options and defaults")

    exp = sub.add_parser("export", help="write a run's final weights as safetensors", epilog=EXPORT_EXAMPLES,
                         formatter_class=fmt, description="Rebuild the model of RUN_DIR from its config.yaml, load "
                         "the weights of its newest checkpoint (checksum verified, weights_only) and write them as "
                         "a safetensors file; the resolved config and the step go into the file's metadata.")
    exp.add_argument("run", metavar="RUN_DIR")
    exp.add_argument("--out", metavar="FILE", help="output file (default: RUN_DIR/model.safetensors)")

    rep = sub.add_parser("report", help="write an HTML report of one or more runs", epilog=REPORT_EXAMPLES,
                         formatter_class=fmt, description="Write report.html for one run, or one page comparing "
                         "several runs' curves and events. Reads run directories only; never re-trains.")
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("--out", metavar="FILE", help="output HTML (default: RUN_DIR/report.html for one run, "
                     "trainlab-report.html for several)")

    law = sub.add_parser("law", help="fit the lr-annealing scaling law to a run, predict other runs' curves",
                         epilog=LAW_EXAMPLES, formatter_class=fmt,
                         description="Fit L(s) = L0 + A*S1^-alpha - C*S2 (Tissue et al. 2024) to FIT_RUN's per-step "
                         "trace, then predict the loss curve of each other run from its learning rates alone and "
                         "compare with what it measured.")
    law.add_argument("fit_run", metavar="FIT_RUN")
    law.add_argument("predict_runs", nargs="*", metavar="RUN_DIR")
    law.add_argument("--predict", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                     help="a hypothetical run to predict without training it: schedule=NAME, schedule.KEY=VALUE, "
                     "steps=N, lr=PEAK (defaults: the fitted run's); repeat for several")
    law.add_argument("--out", metavar="FILE.png", help="plot of measured vs fitted/predicted losses")

    bench = sub.add_parser("bench", help="rank training algorithms by time to a validation target",
                           epilog=BENCH_EXAMPLES, formatter_class=fmt,
                           description="Run submissions on a suite of workloads with validation targets (AlgoPerf "
                           "rules: training time only, here on the cost clock by default; performance profiles; "
                           "speedup over the NAdamW baseline with a confidence interval, a sign test and the smallest "
                           "detectable speedup; held-out variants as a gate with --heldout) and write "
                           "results.jsonl, leaderboard.md, plots and report.html. Also: `bench set-targets`, "
                           "`bench report DIR`, and the studies `bench sensitivity` and `bench transfer` (each has --help).")
    bench.add_argument("names", nargs="*", metavar="SUITE|WORKLOAD",
                       help="suites or workloads (default: small); or set-targets [...] / report DIR")
    bench.add_argument("--submission", action="append", default=[], metavar="SPEC",
                       help="a training algorithm (repeatable); see SPEC below")
    bench.add_argument("--baseline", default="nadamw", metavar="SPEC",
                       help="the submission speedups are measured against (default: nadamw)")
    bench.add_argument("--no-baseline", action="store_true", help="do not add the baseline submission")
    bench.add_argument("--ruleset", choices=["external", "self"], default="external",
                       help="external: tune on the search space; self: defaults only, 3x budgets (default external)")
    bench.add_argument("--seeds", type=int, metavar="N",
                       help="repetitions (seeds 0..N-1) of untuned submissions (default 3); set-targets: target-setting "
                            "seeds (default 5)")
    bench.add_argument("--target-quantile", choices=["worst", "median"], default="worst",
                       help="set-targets: the target is the worst (default) or the median of the seeds' best values")
    bench.add_argument("--trials", type=int, default=5, metavar="N",
                       help="quasi-random trials per study of a search space (default 5); a search space that is a "
                       "list of points runs each point once per study, at most N (the first N points)")
    bench.add_argument("--studies", type=int, metavar="S", help="studies of a search space (default: --seeds)")
    bench.add_argument("--workers", type=int, metavar="W",
                       help="parallel worker processes (default: the CPU cores; 0 = in this process)")
    bench.add_argument("--threads", type=int, metavar="T",
                       help="torch threads per trial (default: cores // workers; 1 on a machine shared with other jobs)")
    bench.add_argument("--backend", choices=["process", "ray"], default="process",
                       help="process: a local process pool; ray: an existing Ray cluster (pip install 'trainlab[ray]')")
    bench.add_argument("--trial-timeout", type=float, metavar="SECONDS",
                       help="kill a trial running longer than this and record it as failed (default: 4 x its time "
                       "budget + 120 s; not with --workers 0)")
    bench.add_argument("--clock", choices=["cost", "cpu", "wall", "steps"],
                       help="what a time to target counts: cost (default): steps to target, each charged the "
                            "submission's seconds per step, measured side by side with the others in one process "
                            "after the trials, so the machine's load cancels; cpu: the trials' CPU seconds of "
                            "training; wall: wall seconds of training; steps: optimizer steps. `bench report DIR "
                            "--clock C` rescores a bench on another clock")
    bench.add_argument("--heldout", action="store_true",
                       help="gate each hit by the workload's held-out variant, reached with the hyperparameters chosen "
                            "on the base workload (trainlab's gate, stricter than AlgoPerf v0.5's; default: no "
                            "held-out variants, as AlgoPerf's rules since 2025)")
    bench.add_argument("--no-heldout", action="store_true", help="no held-out variants (the default; kept for old "
                                                                 "commands)")
    bench.add_argument("--out", metavar="DIR", help="results directory (default: results/SUITE; set-targets: "
                       "results/targets)")
    bench.add_argument("--resume", action="store_true", help="continue the bench in --out: finished trials are kept")
    bench.add_argument("--targets", metavar="FILE", help="read targets and time budgets from FILE (written by "
                       "`bench set-targets`) instead of the packaged trainlab/bench/targets.json")
    bench.add_argument("--targets-file", metavar="FILE", help="set-targets: where to write (default: OUT/targets.json; "
                       "a new file starts from the packaged targets). Only an explicit --targets-file "
                       "trainlab/bench/targets.json rewrites the packaged file")
    bench.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def _split_run_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    config, overrides = None, []
    for i, arg in enumerate(args):
        if "=" in arg:
            overrides.append(arg)
        elif i == 0:
            config = arg
        else:
            raise ConfigError(arg, "expected key=value (a config file may only come first)")
    return config, overrides


def cmd_run(ns: argparse.Namespace) -> int:
    """Train; exit 0 when the run ended, 128 + the signal when Ctrl-C (130) or SIGTERM (143) stopped it.

    A stopped run is saved and resumable (it prints how), but it did not finish: a script, a scheduler or
    torchrun must not take it for a finished one.
    """
    from trainlab.train.run import run_outcome

    config, overrides = _split_run_args(ns.args)
    if ns.resume and config:
        raise ConfigError("", "--resume takes the run's saved config; do not pass a config file")
    outcome = run_outcome(config, overrides, out=ns.out, resume=ns.resume, quiet=ns.quiet, report=not ns.no_report,
                          auto_resume=ns.auto_resume)
    return outcome.exit_code


def _source_kind(meta: dict) -> str:
    """Where an optimizer comes from, as a package: trainlab, torch.optim, pytorch_optimizer, schedulefree, ..."""
    source = str(meta.get("source") or "trainlab")
    return "torch.optim" if source.startswith("torch.optim") else source.split(".")[0]


def _list_optimizers(registry: Registry[Any], options: bool) -> None:
    """A table (name, source, own, summary [exact class]) and a count of entries by source."""
    from collections import Counter

    from trainlab.config import describe_options

    entries = list(registry)
    kinds = {e.name: _source_kind(e.meta) for e in entries}
    width = max(len("NAME"), *(len(e.name) for e in entries))
    source_width = max(len("SOURCE"), *(len(k) for k in kinds.values()))
    print(f"{'NAME':<{width}}  {'SOURCE':<{source_width}}  OWN  SUMMARY")
    for entry in entries:
        kind = kinds[entry.name]
        own = entry.meta.get("own", kind == "trainlab")
        source = str(entry.meta.get("source") or "trainlab")
        exact = f"  [{source}]" if source != kind else ""
        notes = [note for key, note in (("wrapper", "wraps a base optimizer"), ("needs_model", "takes the model"))
                 if entry.meta.get(key)]
        extra = f"  ({'; '.join(notes)})" if notes else ""
        mark = "yes" if own else "-"
        print(f"{entry.name:<{width}}  {kind:<{source_width}}  {mark:<3}  {entry.summary}{exact}{extra}")
        if options:
            for name, type_name, default, help_text in describe_options(entry.options):
                print(f"    optimizer.{name} = {default!r}  ({type_name}) {help_text}")
            if entry.meta.get("fixed"):
                print(f"    (left at the upstream default: {', '.join(entry.meta['fixed'])})")
    counts = Counter(kinds.values())
    by_source = ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
    print(f"{len(entries)} optimizers: {by_source}")


# What `trainlab list WHAT` shows: (module, registry). Importing only that package keeps `list workloads` from
# importing the optimizers (and pytorch_optimizer), as importing the run configuration would.
REGISTRIES = {"workloads": ("trainlab.workloads", "WORKLOADS"), "models": ("trainlab.models", "MODELS"),
              "optimizers": ("trainlab.optim", "OPTIMIZERS"), "schedules": ("trainlab.schedules", "SCHEDULES"),
              "methods": ("trainlab.continual.methods", "METHODS")}


def _list_methods(registry: Registry[Any], options: bool) -> None:
    """Each continual-learning method; with ``options``, its paper and the ``continual.*`` options it owns
    (``OPTION_OWNERS``), then the options every method shares."""
    from trainlab.config import describe_options
    from trainlab.continual.options import OPTION_OWNERS, ContinualOptions

    rows = {name: (type_name, default, help_text) for name, type_name, default, help_text
            in describe_options(ContinualOptions)}

    def show(key: str) -> None:
        type_name, default, help_text = rows[key]
        print(f"    continual.{key} = {default!r}  ({type_name}) {help_text}")

    width = max(len(e.name) for e in registry)
    for entry in registry:
        print(f"{entry.name:<{width}}  {entry.summary}")
        if options:
            if entry.meta.get("paper"):
                print(f"    paper: {entry.meta['paper']}")
            for key, owners in OPTION_OWNERS.items():
                if entry.name in owners:
                    show(key)
    if options:
        print("\noptions of every method (continual.method=NAME selects one):")
        for key in rows:
            if key != "method" and key not in OPTION_OWNERS:
                show(key)


def cmd_list(ns: argparse.Namespace) -> int:
    try:
        return _list(ns)
    except BrokenPipeError:  # `trainlab list ... | head`: the reader has all it wants
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _list(ns: argparse.Namespace) -> int:
    import importlib

    from trainlab.config import describe_options

    if ns.what == "probes":
        from trainlab.probes.registry import PROBES

        width = max(len(e.name) for e in PROBES)
        for entry in PROBES:
            print(f"{entry.name:<{width}}  {entry.summary}\n{'':<{width}}  cost: {entry.meta['cost']}")
            if ns.options and entry.meta.get("paper"):
                print(f"{'':<{width}}  paper: {entry.meta['paper']}")
        return 0
    if ns.what == "strategies":
        from trainlab.distributed.strategy import STRATEGIES

        _print_entries(STRATEGIES)
        if ns.options:
            from trainlab.train.config import DistOptions  # the run configuration (imports the optimizers)

            print("\noptions (dist.KEY=VALUE; each names the strategies it applies to):")
            _print_options("dist", DistOptions)
        return 0
    if ns.what == "sections":
        from trainlab.train.config import SECTIONS

        for section, options in SECTIONS.items():
            if ns.options:
                print(f"{section}:")
                _print_options(section, options)
            else:
                print(f"{section:<10} {', '.join(f'{section}.{name}' for name, *_ in describe_options(options))}")
        return 0
    if ns.what == "federated":
        from trainlab.federated.client import CLIENT_RULES
        from trainlab.federated.clock import SPEEDS
        from trainlab.federated.options import FedOptions
        from trainlab.federated.partition import PARTITIONS
        from trainlab.federated.strategies import STRATEGIES as FED_STRATEGIES

        for title, registry in (("server strategies (fed.strategy)", FED_STRATEGIES),
                                ("client rules (fed.client)", CLIENT_RULES), ("partitions (fed.partition)", PARTITIONS),
                                ("client speeds (fed.speeds)", SPEEDS)):
            print(f"{title}:")
            _print_entries(registry)
        if ns.options:
            print("\noptions (fed.KEY=VALUE):")
            _print_options("fed", FedOptions)
        return 0
    if ns.what == "pruning":
        from trainlab.prune.methods import PRUNE_METHODS
        from trainlab.train.config import PruneOptions

        _print_entries(PRUNE_METHODS)
        if ns.options:
            print("\noptions (prune.KEY=VALUE):")
            _print_options("prune", PruneOptions)
        return 0
    module, attribute = REGISTRIES[ns.what]
    registry = getattr(importlib.import_module(module), attribute)
    if ns.what == "methods":
        _list_methods(registry, ns.options)
        return 0
    if ns.what == "optimizers":
        _list_optimizers(registry, ns.options)
        return 0
    width = max(len(e.name) for e in registry)
    for entry in registry:
        kinds = f"  (reads {', '.join(entry.meta['input_kinds'])})" if "input_kinds" in entry.meta else ""
        print(f"{entry.name:<{width}}  {entry.summary}{kinds}")
        if ns.options:
            for name, type_name, default, help_text in describe_options(entry.options):
                print(f"    {ns.what.rstrip('s')}.{name} = {default!r}  ({type_name}) {help_text}")
    return 0


def _print_entries(registry: Any) -> None:
    """One line per registry entry: its name and summary."""
    width = max(len(e.name) for e in registry)
    for entry in registry:
        print(f"{entry.name:<{width}}  {entry.summary}")


def _print_options(prefix: str, options: type) -> None:
    """One line per option of ``options``: ``prefix.name = default  (type) help``."""
    from trainlab.config import describe_options

    for name, type_name, default, help_text in describe_options(options):
        print(f"    {prefix}.{name} = {default!r}  ({type_name}) {help_text}")


def cmd_export(ns: argparse.Namespace) -> int:
    from trainlab.rundir import check_output_path, printable
    from trainlab.train.load import load_run

    if ns.out:
        check_output_path(ns.out)  # never over a run's records
    run = load_run(ns.run)
    out = run.export(ns.out or run.path / "model.safetensors")
    print(f"trainlab: {sum(p.numel() for p in run.model.state_dict().values()):,} weights of step {run.step} "
          f"written to {printable(str(out))}")  # a path that is not UTF-8 as \xNN: any terminal prints it
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    from trainlab.report import write_compare_report, write_run_report
    from trainlab.rundir import printable

    for path in ns.runs:
        if not Path(path).is_dir():
            raise ConfigError("", f"{path} is not a directory")
    if len(ns.runs) == 1 and ns.out is None:
        out = write_run_report(Path(ns.runs[0]))
    else:
        out = write_compare_report([Path(p) for p in ns.runs], Path(ns.out or "trainlab-report.html"))
    print(f"trainlab: report written to {printable(str(out))}")
    return 0


def _describe(spec: Sequence[str]) -> str:
    return " ".join(spec)


def cmd_law(ns: argparse.Namespace) -> int:
    import numpy as np

    from trainlab.errors import RunError, UserError
    from trainlab.schedules import annealing_law as law

    image_format = _plot_format(ns.out) if ns.out else ""  # checked before the fit, which takes a while
    try:  # a run directory's problems are RunDirErrors (UserErrors); a fit that cannot be made is a ValueError
        params = law.fit_run(ns.fit_run)
        curves = {ns.fit_run: law.run_curve(ns.fit_run)}
        curves.update({path: law.run_curve(path) for path in ns.predict_runs})
    except UserError:
        raise
    except ValueError as err:
        raise RunError(str(err).splitlines()[0]) from None
    hypothetical = {_describe(spec): law.hypothetical_lrs(ns.fit_run, spec) for spec in ns.predict}
    print(f"fit on {ns.fit_run}: L0 {params.L0:.4g}  A {params.A:.4g}  alpha {params.alpha:.4g}  C {params.C:.4g}  "
          f"(lambda {params.lam}, lr scale {params.lr_scale:.3g}, fit rmse {params.rmse:.3g})")
    for path, (lrs, losses) in curves.items():
        predicted = law.predict(params, lrs)
        tail = slice(max(0, len(losses) - max(1, len(losses) // 20)), None)  # last 5% of steps, less noisy
        measured_end, predicted_end = np.nanmean(losses[tail]), float(np.mean(predicted[tail]))
        role = "fitted" if path == ns.fit_run else "predicted"
        print(f"  {path}: {role} final loss {predicted_end:.4g}, measured {measured_end:.4g} "
              f"(last 5% of steps; difference {predicted_end - measured_end:+.3g})")
    for label, lrs in hypothetical.items():
        predicted = law.predict(params, lrs)
        tail = slice(max(0, len(lrs) - max(1, len(lrs) // 20)), None)
        print(f"  {label}: predicted final loss {float(np.mean(predicted[tail])):.4g} ({len(lrs)} steps, "
              f"peak lr {float(lrs.max()):.3g}; not run)")
    if ns.out:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 4.5))
        ax = fig.add_subplot()
        for path, (lrs, losses) in curves.items():
            size = max(1, len(losses) // 100)
            n = len(losses) // size * size
            steps = np.arange(n).reshape(-1, size).mean(1)
            line, = ax.plot(steps, np.nanmean(losses[:n].reshape(-1, size), 1), alpha=0.6, label=f"{path} measured")
            ax.plot(np.arange(len(lrs)), law.predict(params, lrs), "--", color=line.get_color(),
                    label=f"{path} {'fit' if path == ns.fit_run else 'predicted'}")
        for label, lrs in hypothetical.items():
            ax.plot(np.arange(len(lrs)), law.predict(params, lrs), ":", label=f"{label} predicted (not run)")
        ax.set(xlabel="step", ylabel="train loss (per batch, binned)", title="lr-annealing scaling law")
        ax.legend(fontsize=8)
        from trainlab.report.output import write_figure
        from trainlab.rundir import printable

        write_figure(fig, ns.out, format=image_format, dpi=110, bbox_inches="tight")
        print(f"trainlab: plot written to {printable(ns.out)}")
    return 0


def _plot_format(out: str) -> str:
    """The image format that the plot file ``out`` names by its extension (png without one). Refused: a run's
    records (:func:`~trainlab.rundir.check_output_path`) and a format that matplotlib cannot write."""
    from matplotlib.backend_bases import FigureCanvasBase

    from trainlab.rundir import check_output_path

    check_output_path(out)
    image_format = Path(out).suffix[1:].lower() or "png"
    formats = FigureCanvasBase.get_supported_filetypes()
    if image_format not in formats:
        raise ConfigError("--out", f"matplotlib cannot write .{image_format} images; use one of "
                                   f"{', '.join('.' + f for f in sorted(formats))}")
    return image_format


def cmd_bench(ns: argparse.Namespace) -> int:
    for flag in ("seeds", "trials", "studies", "threads"):
        value = getattr(ns, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag}", f"must be >= 1, got {value}")
    if ns.workers is not None and ns.workers < 0:
        raise ConfigError("--workers", f"must be >= 0, got {ns.workers}")
    if ns.heldout and ns.no_heldout:
        raise ConfigError("--heldout", "and --no-heldout contradict each other; give one")
    action = ns.names[0] if ns.names else ""
    if action in ("set-targets", "report") and ns.submission:
        raise ConfigError("--submission", f"`bench {action}` takes no submissions")
    if action in ("set-targets", "report") and ns.targets:
        raise ConfigError("--targets", f"`bench {action}` reads no targets (set-targets writes --targets-file)")
    if action in ("set-targets", "report") and ns.trial_timeout is not None:
        raise ConfigError("--trial-timeout", f"`bench {action}` takes no trial timeout (only a bench's trials have one)")
    if action == "set-targets" and ns.clock:
        raise ConfigError("--clock", "`bench set-targets` sets targets, not times to target; a bench has a clock")
    if action != "set-targets" and ns.targets_file:
        raise ConfigError("--targets-file", "only `bench set-targets` writes targets; a bench reads --targets")
    if action != "set-targets" and ns.target_quantile != "worst":
        raise ConfigError("--target-quantile", "chooses how `bench set-targets` sets targets; a bench reads them")
    if action == "report":
        from trainlab.bench.report import write_report

        if len(ns.names) != 2 or not Path(ns.names[1]).is_dir():
            raise ConfigError("bench report", "expected one results directory: trainlab bench report DIR")
        if ns.clock == "cost":  # measured here if missing, with the bench's trial thread count
            import json

            from trainlab.bench.runner import load_records
            from trainlab.bench.stepcost import ensure_costs

            bench_file = Path(ns.names[1]) / "bench.json"
            info = json.loads(bench_file.read_text()) if bench_file.is_file() else {}
            ensure_costs(ns.names[1], load_records(ns.names[1]), threads=ns.threads or info.get("threads") or 1,
                         progress=not ns.quiet)
        paths = write_report(Path(ns.names[1]), ns.clock)
        print("trainlab: " + ", ".join(str(p) for p in paths))
        return 0
    if action == "set-targets":
        from trainlab.bench.targets import set_targets

        out = ns.out or "results/targets"
        targets_file = ns.targets_file or str(Path(out) / "targets.json")  # never the installed package by default
        data = set_targets(ns.names[1:], seeds=ns.seeds or 5, quantile=ns.target_quantile, workers=ns.workers,
                           threads=ns.threads, out=out,
                           targets_file=targets_file, progress=not ns.quiet,
                           command="trainlab bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "")
        for name, entry in data["workloads"].items():
            print(f"  {name:<24} target {entry['metric']} {entry['target']:.4g}  time budget {entry['time_budget']:g} s  "
                  f"(best per seed {', '.join(f'{b:.4g}' for b in entry['best_per_seed'] if b is not None)})")
        print(f"trainlab: targets written to {targets_file}; bench against them with --targets {targets_file}")
        return 0
    from trainlab.bench.bench import run_bench

    if not ns.submission and ns.no_baseline:
        raise ConfigError("--submission", "give at least one submission (or drop --no-baseline)")
    result = run_bench(ns.names, ns.submission, baseline=None if ns.no_baseline else ns.baseline,
                       ruleset=ns.ruleset, seeds=ns.seeds or 3, trials=ns.trials, studies=ns.studies or ns.seeds or 3,
                       workers=ns.workers, threads=ns.threads, backend=ns.backend, heldout=ns.heldout,
                       clock=ns.clock or "cost",
                       out=ns.out, resume=ns.resume, progress=not ns.quiet, targets=ns.targets,
                       trial_timeout=ns.trial_timeout)
    print(result.text)
    return 0


# OS errors that are about the machine, not about trainlab, with what the user can do. One of these without a
# file name (a full disk is often reported so) is still the user's to fix; any other errno without one is a bug.
ENVIRONMENT_ERRNOS = {
    "ENOSPC": "free some space or write elsewhere (--out)",
    "EDQUOT": "free some space or write elsewhere (--out)",
    "EFBIG": "the file system refuses a file this large; write elsewhere (--out)",
    "EROFS": "write elsewhere (--out)",
    "EACCES": "write elsewhere (--out) or change the permissions",
    "EPERM": "write elsewhere (--out) or change the permissions",
    "ENAMETOOLONG": "choose a shorter --out or name",
    "EMFILE": "raise the limit of open files (ulimit -n) or run fewer workers",
    "ENFILE": "close other programs or run fewer workers",
    "ENOMEM": "free memory or choose smaller sizes",
    "EIO": "the disk or the file system failed; check it",
}


def failure_line(err: BaseException) -> str | None:
    """The one line :func:`main` prints for an expected failure, or None for a bug (it keeps its traceback).

    Expected: a :class:`~trainlab.errors.UserError`, an OS error about a file the user named or about the
    machine (:data:`ENVIRONMENT_ERRNOS`), and running out of memory.
    """
    import errno

    from trainlab.errors import UserError, one_line, quote_path

    if isinstance(err, UserError):
        return f"trainlab: {err.kind}: {one_line(err)}"
    if isinstance(err, MemoryError):
        return "trainlab: error: out of memory; choose smaller sizes (batch_size, model and workload options)"
    if not isinstance(err, OSError):
        return None
    if err.filename is not None:
        return f"trainlab: error: {quote_path(err.filename)}: {err.strerror or one_line(err)}"
    name = errno.errorcode.get(err.errno) if err.errno is not None else None
    if name in ENVIRONMENT_ERRNOS:
        return f"trainlab: error: {err.strerror or one_line(err)} ({name}); {ENVIRONMENT_ERRNOS[name]}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 2 and args[0] == "bench" and args[1] in STUDIES:  # the studies have parsers of their own
        ns = build_study_parser(args[1]).parse_args(args[2:])
        ns.command, ns.study = "bench-study", args[1]
    else:
        parser = build_parser()
        ns = parser.parse_args(args)
    if ns.command is None:
        parser.print_help()
        return EXIT_USAGE
    from trainlab.errors import UserError

    handlers = {"run": cmd_run, "list": cmd_list, "report": cmd_report, "export": cmd_export, "law": cmd_law, "bench": cmd_bench,
                "bench-study": lambda ns: cmd_bench_study(ns.study, ns)}
    try:
        return handlers[ns.command](ns)
    except (UserError, OSError, MemoryError) as err:  # what a user can fix or the machine lacks: one line, exit 2
        line = failure_line(err)
        if line is None:  # an OS error about neither a file nor the machine: a bug, keep the traceback
            raise
        print(line, file=sys.stderr)
    except KeyboardInterrupt:
        print("trainlab: aborted", file=sys.stderr)
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
