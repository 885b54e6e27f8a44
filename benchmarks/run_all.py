"""`make bench`: every study in turn (one at a time: they time the machine), then the README.

python benchmarks/run_all.py                 # all studies, CPU, default sizes (hours)
python benchmarks/run_all.py --only mnist compare
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STUDIES = [
    "throughput", "sgd_vs_eigenpro", "spectrum", "mnist", "compare", "cifar10", "scale",
    "robustness", "model_selection", "tabular",
]  # fmt: skip
#: Options a study always gets from run_all (scale: its MNIST part too).
STUDY_OPTIONS = {"scale": ["--mnist"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=STUDIES, default=STUDIES)
    p.add_argument("extra", nargs=argparse.REMAINDER, help="options passed to every study")
    args = p.parse_args()
    for study in args.only:
        print(f"=== {study}", flush=True)
        command = [sys.executable, str(HERE / f"{study}.py"), *STUDY_OPTIONS.get(study, [])]
        subprocess.run([*command, *args.extra], check=True)
    subprocess.run([sys.executable, str(HERE / "report.py")], check=True)


if __name__ == "__main__":
    main()
