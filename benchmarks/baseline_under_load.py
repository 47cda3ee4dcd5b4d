"""The tuned baseline benched twice -- quietly, and beside busy neighbours -- scored together as two submissions on
each clock: how far does load move the benchmark score? (issue 12; results in benchmarks/RESULTS.md)

    OMP_NUM_THREADS=1 trainlab bench small --workers 2 --threads 1 --clock cpu --out /tmp/bl/quiet --quiet
    (python -c "while True: pass" & python -c "while True: pass" & \\
     OMP_NUM_THREADS=1 trainlab bench small --workers 2 --threads 1 --clock cpu --out /tmp/bl/loaded --quiet; kill %1 %2)
    python benchmarks/baseline_under_load.py /tmp/bl/quiet /tmp/bl/loaded [--costs FILE]

On the cost clock the two runs' step costs are measured side by side in this process (the same configuration
under two names, so their ratio is the measurement's own noise), or read from ``--costs FILE`` when it exists
(written there otherwise; default: QUIET/../step_costs_quiet_loaded.json).
"""
import argparse
import json
import os
from pathlib import Path

from trainlab.bench import stepcost
from trainlab.bench.results import standings
from trainlab.bench.runner import load_records


def tagged(path, name):
    return [{**r, "submission": name} for r in load_records(path)]


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("quiet", nargs="?", default="/tmp/bl/quiet")
parser.add_argument("loaded", nargs="?", default="/tmp/bl/loaded")
parser.add_argument("--costs", help="step-cost file (read if it exists, else measured and written)")
args = parser.parse_args()

records = tagged(args.quiet, "quiet") + tagged(args.loaded, "loaded")
workloads = json.load(open(f"{args.quiet}/bench.json"))["workloads"]
costs_file = Path(args.costs or Path(args.quiet).parent / "step_costs_quiet_loaded.json")
if costs_file.is_file():
    costs = json.loads(costs_file.read_text())
else:
    costs = stepcost.measure(stepcost.jobs_from_records(records), in_process=True)
    costs_file.write_text(json.dumps(costs, indent=1) + "\n")
    print(f"step costs measured (load average {os.getloadavg()[0]:.2f} after) and written to {costs_file}")
records = stepcost.with_cost_time(records, stepcost.cost_seconds(costs, "quiet"), "quiet")
rel = stepcost.relative(costs, "quiet")
print("cost of loaded's step relative to quiet's (same configuration): "
      + ", ".join(f"{w} {rel[w]['loaded']:.3f}" for w in workloads))
print()
print("| clock | score, quiet | score, loaded | difference | loaded vs quiet speedup [95% CI] | solved | verdict |")
print("|---|---|---|---|---|---|---|")
for clock in ("cost", "cpu", "wall", "steps"):
    st = standings(records, workloads, ["quiet", "loaded"], "quiet", heldout=False, clock=clock)
    row = {r.name: r for r in st.rows}
    print(f"| {clock} | {row['quiet'].score:.3f} | {row['loaded'].score:.3f} | "
          f"{abs(row['quiet'].score - row['loaded'].score):.3f} | "
          f"{row['loaded'].speedup:.2f}x [{row['loaded'].ci[0]:.2f}, {row['loaded'].ci[1]:.2f}] | "
          f"{row['quiet'].solved}/5, {row['loaded'].solved}/5 | {row['loaded'].verdict} |")
