"""The tuned baseline benched twice -- quietly, and beside busy neighbours -- scored together as two submissions on
each clock: how far does load move the benchmark score? (issue 12; results in benchmarks/RESULTS.md)

    OMP_NUM_THREADS=1 trainlab bench small --workers 2 --threads 1 --out /tmp/bl/quiet --quiet
    (python -c "while True: pass" & python -c "while True: pass" & \
     OMP_NUM_THREADS=1 trainlab bench small --workers 2 --threads 1 --out /tmp/bl/loaded --quiet; kill %1 %2)
    python benchmarks/baseline_under_load.py /tmp/bl/quiet /tmp/bl/loaded
"""
import json
import sys

from trainlab.bench.results import standings
from trainlab.bench.runner import load_records

def tagged(path, name):
    return [{**r, "submission": name} for r in load_records(path)]

quiet, loaded = sys.argv[1:3] if len(sys.argv) >= 3 else ("/tmp/bl/quiet", "/tmp/bl/loaded")
records = tagged(quiet, "quiet") + tagged(loaded, "loaded")
workloads = json.load(open(f"{quiet}/bench.json"))["workloads"]
print("| clock | score, quiet | score, loaded | difference | loaded vs quiet speedup [95% CI] | solved | verdict |")
print("|---|---|---|---|---|---|---|")
for clock in ("cpu", "wall", "steps"):
    st = standings(records, workloads, ["quiet", "loaded"], "quiet", heldout=False, clock=clock)
    row = {r.name: r for r in st.rows}
    print(f"| {clock} | {row['quiet'].score:.3f} | {row['loaded'].score:.3f} | {abs(row['quiet'].score - row['loaded'].score):.3f} | "
          f"{row['loaded'].speedup:.2f}x [{row['loaded'].ci[0]:.2f}, {row['loaded'].ci[1]:.2f}] | {row['quiet'].solved}/5, {row['loaded'].solved}/5 | {row['loaded'].verdict} |")
