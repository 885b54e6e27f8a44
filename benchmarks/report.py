"""Generate the README's results section from ``benchmarks/results/*.json``.

The tables between the markers ``<!-- results:begin -->`` and ``<!-- results:end -->`` in
README.md are replaced; nothing in them is typed by hand.

    python benchmarks/report.py            # rewrite README.md in place
    python benchmarks/report.py --print    # print the section instead
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine(data: dict) -> str:
    m = data["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cpu_count']} cores"
    return f"{where}; torch {data['versions']['torch']}, {data['settings'].get('dtype', '')}"


def _f(value, fmt=".2f", missing="n/a"):
    return missing if value is None else format(value, fmt)


def mnist_section(data: dict, title: str) -> list[str]:
    out = [f"### {title}", "", f"Measured on: {_machine(data)}.", ""]
    out += [
        "| kernel (bandwidth) | test error by epoch (%) | s / epoch | set-up s | q | s | m | "
        "step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kernel, run in data["results"].items():
        c = run["chosen"]
        errors = ", ".join(f"{e:.2f}" for e in run["test_error_pct"])
        per_epoch = sum(run["epoch_seconds"]) / len(run["epoch_seconds"])
        out.append(
            f"| {kernel} ({run['bandwidth']:.3g}) | {errors} | {per_epoch:.1f} | "
            f"{run['setup_seconds']:.1f} | {c['n_components']} | {c['subsample_size']} | "
            f"{c['batch_size']} | {c['step_size']:.3g} |"
        )
    out += ["", "Paper (Gaussian kernel, test error % by epoch): " + "; ".join(
        f"{name}: " + ", ".join(f"{e}% @{k}" for k, e in pts.items())
        for name, pts in data["paper"].items()
    ) + ".", ""]  # fmt: skip
    return out


def cifar_section(data: dict) -> list[str]:
    out = ["### CIFAR-10", "", f"Measured on: {_machine(data)}. {data['settings']['test_set']}", ""]
    out += ["| kernel (bandwidth) | test accuracy by epoch (%) | s / epoch | q | m |",
            "|---|---|---|---|---|"]  # fmt: skip
    for kernel, run in data["results"].items():
        acc = ", ".join(f"{100 - e:.1f}" for e in run["test_error_pct"])
        per_epoch = sum(run["epoch_seconds"]) / len(run["epoch_seconds"])
        c = run["chosen"]
        out.append(
            f"| {kernel} ({run['bandwidth']:.3g}) | {acc} | {per_epoch:.1f} | "
            f"{c['n_components']} | {c['batch_size']} |"
        )
    if "bandwidth_selection" in data:
        out += ["", "Bandwidths chosen on a split of the training set: " + "; ".join(
            f"{k}: {v['chosen']:.3g} (from {', '.join(f'{b:.3g}' for b in v['grid'])})"
            for k, v in data["bandwidth_selection"].items()
        ) + "."]  # fmt: skip
    return out + [""]


def compare_section(data: dict) -> list[str]:
    out = ["### EigenPro against the alternatives (MNIST)", "", f"Measured on: {_machine(data)}.",
           f"EigenPro and plain SGD: {data['settings']['epochs']} epochs; plain SGD at "
           "EigenPro's batch size; error on the 10000 test images.", ""]  # fmt: skip
    out += ["| n | method | fit s | predict s | test error % | peak RSS MiB |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for row in data["results"]:
        for method, run in row.items():
            if method == "n":
                continue
            if "skipped" in run:
                name = method.replace("_", " ")
                out.append(f"| {row['n']} | {name} | skipped: {run['skipped']} | | | |")
                continue
            if method == "plain_sgd":
                reach = run["epochs_to_target"]
                note = (f"reaches EigenPro's training loss after {reach} epochs" if reach else
                        f"not there after {run['epochs_run']} epochs")  # fmt: skip
                out.append(
                    f"| {row['n']} | plain SGD ({note}) | "
                    f"{_f(run.get('fit_seconds_same_epochs'), '.1f')} | | "
                    f"{_f(run.get('test_error_pct_same_epochs'))} | {run['peak_rss_mib']:.0f} |"
                )
                continue
            name = method.replace("_", " ")
            if "penalty" in run:  # Falkon: its penalty was chosen on a held-out split
                name += (f" (penalty {run['penalty']:g} chosen on held-out training data in "
                         f"{run['tuning_seconds']:.0f} s)")  # fmt: skip
            out.append(
                f"| {row['n']} | {name} | {run['fit_seconds']:.1f} | "
                f"{run['predict_seconds']:.1f} | {run['test_error_pct']:.2f} | "
                f"{run['peak_rss_mib']:.0f} |"
            )
    out += ["", crossover(data)]
    return out + [""]


def crossover(data: dict) -> str:
    """Where EigenPro's fit becomes faster than KernelRidge's: measured, and in flops."""
    epochs, d = data["settings"]["epochs"], 784
    both = [r for r in data["results"] if "skipped" not in r["kernel_ridge"]]
    faster = [
        r["n"] for r in both if r["eigenpro"]["fit_seconds"] < r["kernel_ridge"]["fit_seconds"]
    ]
    slower = [r["n"] for r in both if r["n"] not in faster]
    flops_n = 6 * epochs * d  # epochs * 2 n^2 d = n^3 / 3
    if faster:
        measured = (f"EigenPro's fit is faster than KernelRidge's from n = {min(faster)} on"
                    + (f" (slower at n = {max(slower)})" if slower else ""))  # fmt: skip
    else:
        measured = "EigenPro's fit was not faster than KernelRidge's at any n measured"
    return (f"{measured}; counting flops alone (epochs x 2 n^2 d against n^3 / 3) the crossover "
            f"is n = 6 x epochs x d = {flops_n}. KernelRidge also evaluates the kernel and "
            "works in float64, which moves the measured crossover lower.")  # fmt: skip


def throughput_section(data: dict, before: dict | None, repeats=(), where="") -> list[str]:
    """``repeats``: (label, after, before) of further runs, interleaved with the first;
    ``where``: the machine, in the heading, for a second machine's section."""
    title = "### One epoch against the physical floor (MNIST, d = 784, float32)"
    tries = data["settings"].get("epochs", 1)
    how = f"Epoch: the fastest of {tries}."
    if "floor_tries_seconds" in data["results"][0]:
        counts = "/".join(str(len(r["epoch_tries_seconds"])) for r in data["results"])
        how = (f"Epoch: the fastest of {counts} one-epoch fits (by n); floor: the fastest of "
               "one sample more.")  # fmt: skip
    out = [title + (f", {where}" if where else ""), "",
           f"Measured on: {_machine(data)}. {how} Floor: {data['floor']}.", ""]  # fmt: skip
    batch_rows = "batch_floor_seconds" in data["results"][0]
    head = "| n | epoch s | floor s | ratio | peak RSS MiB | data MiB |"
    if batch_rows:
        head += " batch | floor at batch rows s | ratio to it |"
    if before:
        head += " ratio before |"
    for label, _, before_run in repeats:
        head += f" ratio ({label}) |" + (f" before ({label}) |" if before_run else "")
    out += [head, "|---" * (head.count("|") - 1) + "|"]

    def ratios(run):
        return {r["n"]: f"{r['ratio_to_floor']:.3f}" for r in run["results"]} if run else {}

    old = ratios(before)
    for r in data["results"]:
        line = (
            f"| {r['n']} | {r['epoch_seconds']:.1f} | {r['floor_seconds']:.1f} | "
            f"{r['ratio_to_floor']:.3f} | {r['peak_rss_mib']:.0f} | {r['data_mib']:.0f} |"
        )
        if batch_rows:
            line += (f" {r['batch_size']} | {r['batch_floor_seconds']:.1f} | "
                     f"{r['ratio_to_batch_floor']:.3f} |")  # fmt: skip
        if before:
            line += f" {old.get(r['n'], '')} |"
        for _, after_run, before_run in repeats:
            line += f" {ratios(after_run).get(r['n'], '')} |"
            line += f" {ratios(before_run).get(r['n'], '')} |" if before_run else ""
        out.append(line)
    if before:
        code = before.get("code") or f"eigenpro {before['versions'].get('eigenpro_commit')}"
        out += ["", f"Ratio before: {code}; measured on: {_machine(before)}."]
    return out + [""]


def sgd_section(data: dict) -> list[str]:
    out = ["### EigenPro against plain kernel SGD (Gaussian kernel)", "",
           f"Measured on: {_machine(data)}. Target: EigenPro's training MSE after its epochs.",
           ""]  # fmt: skip
    out += ["| problem | n | EigenPro: epochs, s | plain SGD at EigenPro's batch | "
            "plain SGD at its own batch |", "|---|---|---|---|---|"]  # fmt: skip

    def reach(run):
        if run["epochs_to_target"] is None:
            return f"not reached in {run['epochs_run']} epochs ({run['seconds'][-1]:.1f} s)"
        return f"{run['epochs_to_target']} epochs, {run['seconds_to_target']:.1f} s"

    for s in data["results"]:
        ep, same, own = s["eigenpro"], s["sgd_same_batch"], s["sgd_own_batch"]
        out.append(
            f"| {s['problem']} | {s['n']} | {reach(ep)} (m = {ep['batch_size']}) | "
            f"{reach(same)} (m = {same['batch_size']}) | {reach(own)} (m = {own['batch_size']}) |"
        )
    return out + [""]


def scale_section(data: dict) -> list[str]:
    out = ["### EigenPro 3: scale (synthetic, streamed from a memmap)", "",
           f"Measured on: {_machine(data)}; {data['settings'].get('epochs', 1)} epoch(s) per n "
           "(the fastest counts), "
           f"d = {data['settings'].get('n_features')}.", ""]  # fmt: skip
    out += ["| n | centers p | epoch s | us / point | set-up s | peak RSS MiB | data MiB |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in data["results"]:
        out.append(
            f"| {r['n_train']} | {r['n_centers']} | {r['seconds_per_epoch']:.1f} | "
            f"{1e6 * r['seconds_per_point']:.1f} | {r['setup_seconds']:.1f} | "
            f"{_f(r['peak_rss_mib'], '.0f')} | {r['data_bytes'] / 2**20:.0f} |"
        )
    flat, memory = data["seconds_per_point_flat_within_25pct"], data["memory_below_data_plus_2gib"]
    out += ["", f"Seconds per point flat within 25%: {flat}; peak memory below data + 2 GiB: "
            f"{memory}.", ""]  # fmt: skip
    return out


def scale_mnist_section(data: dict) -> list[str]:
    res = data["results"]
    out = ["### EigenPro 3 centers against the EigenPro 2 path (MNIST 60k, Gaussian bandwidth 5)",
           "", f"Measured on: {_machine(data)}.", ""]  # fmt: skip
    epochs = max(len(r["test_error_pct"]) for r in res.values())
    head = "| model | centers | " + " | ".join(f"error % ep {e}" for e in range(1, epochs + 1))
    out += [head + " | s / epoch | set-up s |", "|---" * (epochs + 4) + "|"]
    names = {"eigenpro3": "EigenPro 3 (`n_centers`)", "eigenpro2": "EigenPro 2 (all points)"}
    for key, r in res.items():
        errors = " | ".join(f"{e:.2f}" for e in r["test_error_pct"])
        per_epoch = sum(r["epoch_seconds"]) / len(r["epoch_seconds"])
        out.append(f"| {names.get(key, key)} | {r['n_centers']} | {errors} | {per_epoch:.1f} | "
                   f"{r['setup_seconds']:.1f} |")  # fmt: skip
    return out + [""]


def large_model_section(data: dict) -> list[str]:
    """Test error by epoch for each projection against the direct least-squares fit."""
    out = ["### Large models: p general centers on MNIST (Gaussian bandwidth 5)", "",
           f"Measured on: {_machine(data)}. Every run draws the same p centers (seed "
           f"{data['settings'].get('seed')}); the direct solve is the least-squares fit on "
           f"them in float64 (penalty {data['settings'].get('penalty')}).", ""]  # fmt: skip
    if data.get("note"):
        out += [data["note"], ""]
    epochs = max(len(r["test_error_pct"]) for runs in data["results"].values()
                 for r in runs.values())  # fmt: skip
    head = "| p | projection | " + " | ".join(f"ep {e}" for e in range(1, epochs + 1))
    out += [head + " | s / epoch | s to ep 5 | fit s |", "|---" * (epochs + 5) + "|"]
    for p, runs in data["results"].items():
        for name, r in runs.items():
            errors = [f"{e:.2f}" for e in r["test_error_pct"]]
            errors += [""] * (epochs - len(errors))
            seconds = r.get("epoch_seconds")
            per_epoch = f"{sum(seconds) / len(seconds):.1f}" if seconds else ""
            to_five = f"{r['setup_seconds'] + sum(seconds[:5]):.0f}" if seconds else ""
            out.append(f"| {p} | {name} | " + " | ".join(errors)
                       + f" | {per_epoch} | {to_five} | {r['fit_seconds']:.0f} |")  # fmt: skip
    return out + ["", "Test error (%) after each epoch; the direct solve's and Falkon's single "
                  "value is their error. s to ep 5: set-up and five epochs.", ""]  # fmt: skip


def scale_centers_section(data: dict) -> list[str]:
    """Seconds per epoch, memory and loss as the number of centers grows."""
    out = ["### Large models at scale: synthetic d = 32, streamed from a memmap", "",
           f"Measured on: {_machine(data)}; n = {data['results'][0]['n_train']}, "
           f"memory_gb {data['settings'].get('memory_gb')}, "
           f"{data['settings'].get('epochs')} epoch(s).", ""]  # fmt: skip
    out += [
        "| p | projection | s / epoch | set-up s | training loss | R^2 (20k rows) | "
        "peak RSS MiB | dense p x p float32 GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        method = r["inner_params"]["method"] if r["method"] == "auto" else r["method"]
        out.append(
            f"| {r['n_centers']} | {r['method']} ({method}) | {r['seconds_per_epoch']:.0f} | "
            f"{r['setup_seconds']:.0f} | {r['train_loss'][-1]:.4g} | {r['train_r2_20k']:.4f} | "
            f"{_f(r['peak_rss_mib'], '.0f')} | {r['dense_p_by_p_gib_float32']:.1f} |"
        )
    return out + [""]


def robustness_section(data: dict, before: dict | None) -> list[str]:
    """Offsets, scales, slow divergence and memory budgets, before and after issue 9."""
    res = data["results"]
    old = before["results"] if before else {}

    def r2(run):
        if run is None:
            return ""
        if "error" in run:
            return run["error"].split(":")[0]
        return f"{run['r2']:.3f}"

    out = ["### Robustness: offsets, scales, slow divergence, memory budgets", "",
           f"Measured on: {_machine(data)} (`benchmarks/robustness.py`; 'before': "
           f"eigenpro {before['versions'].get('eigenpro_commit') if before else 'n/a'})."
           " Held-out R^2 of `EigenProRegressor(bandwidth=2, n_epochs=5)`, float32, 400 x 4 "
           "normal features shifted by a common offset, y = sin(x0) + 0.1 x1:", ""]  # fmt: skip
    offsets = [k for k in res["offsets"]["gaussian"]]
    out += ["| kernel | " + " | ".join(f"offset {o}" for o in offsets) + " |",
            "|---" * (len(offsets) + 1) + "|"]  # fmt: skip
    for kernel, runs in res["offsets"].items():
        if not kernel.endswith("min_max"):
            before_runs = old.get("offsets", {}).get(kernel, {})
            cells = [f"{r2(runs[o])} (was {r2(before_runs.get(o))})" for o in offsets]
            out.append(f"| {kernel} | " + " | ".join(cells) + " |")
    real = res.get("real_world", {})
    if real:
        prev = old.get("real_world", {})
        out += ["", "Raw real-world columns against the same data centred by hand (held-out R^2, "
                "automatic bandwidth): " + "; ".join(
                    f"{k.replace('_', ' ')}: {r2(v)} (was {r2(prev.get(k))})"
                    for k, v in real.items()) + "."]  # fmt: skip
    scales = res.get("scales", {})
    if scales:
        out += ["", "Features scaled by a factor (automatic bandwidth), held-out R^2:", "",
                "| path | " + " | ".join(f"x {k}" for k in scales["eigenpro2"]) + " |",
                "|---" * (len(scales["eigenpro2"]) + 1) + "|"]  # fmt: skip
        for path, runs in scales.items():
            prev = old.get("scales", {}).get(path, {})
            out.append(f"| {path} | " + " | ".join(
                f"{r2(runs[k])} (was {r2(prev.get(k))})" for k in runs) + " |")  # fmt: skip
    slow = res.get("slow_divergence", {})
    if slow:
        prev = old.get("slow_divergence", {})
        out += ["", "Small Nystrom subsample (200 points), training R^2: " + "; ".join(
            f"{k}: {r2(v)} (was {r2(prev.get(k))})" for k, v in slow.items()) + "."]  # fmt: skip
    memory = res.get("memory", [])
    if memory:
        prev = {r["memory_gb"]: r for r in old.get("memory", [])}
        out += ["", "`memory_gb` at n = 20000, d = 100 (one epoch, a fresh process each; torch "
                "and BLAS add about 20 MiB of buffers on first use):", "",
                "| memory_gb | peak RSS growth MiB | q | subsample | batch | s | before: MiB, q, "
                "batch, s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in memory:
            p = prev.get(r["memory_gb"])
            was = (f"{p['peak_growth_mib']:.0f}, {p['n_components']}, {p['batch_size']}, "
                   f"{p['seconds']:.1f}" if p else "")  # fmt: skip
            out.append(
                f"| {r['memory_gb']} | {r['peak_growth_mib']:.0f} | {r['n_components']} | "
                f"{r['subsample_size']} | {r['batch_size']} | {r['seconds']:.1f} | {was} |"
            )
    return out + [""]


def tabular_section(data: dict) -> list[str]:
    """Real tables: held-out R^2 (fit seconds) of each model, then the classification sets."""
    m = data["machine"]
    out = ["### Real tabular data (`benchmarks/tabular.py`)", "",
           f"Measured on: {m['cpu']}, {m['cpu_count']} cores; torch {data['versions']['torch']}, "
           "float32, one run. Held-out R^2 (fit seconds) on a fixed 75/25 split, the same "
           "preprocessing for every model (numeric columns imputed and standardised, the "
           "others one-hot encoded). The 3x3 grid is how EigenPro had to be tuned before its "
           "automatic defaults (bandwidth 0.5 / 2 / 8, alpha 0 / 1e-3 / 0.1, no intercept, 10 "
           "epochs, every point a center, 3-fold); KernelRidge is tuned by a 3-fold grid over "
           "alpha and gamma on sets of at most 6000 training rows.", ""]  # fmt: skip
    names = ["EigenPro defaults", "EigenPro 3x3 grid (before)", "KernelRidge grid",
             "HistGradientBoosting defaults", "EigenPro every point a center"]  # fmt: skip
    out += ["| data (train rows x features) | target | " + " | ".join(
        n.replace(" defaults", " `()`") for n in names) + " |",
        "|---|---|" + "---|" * len(names)]  # fmt: skip
    for name, run in data["regression"].items():
        cells = []
        for model in names:
            r = run["models"].get(model)
            if r is None or "r2" not in r:
                cells.append("-")
            else:
                cells.append(f"{r['r2']:.3f} ({r['fit_seconds']:.1f} s)")
        out.append(f"| {name} ({run['n_train']} x {run['n_features']}) | {run['target']} | "
                   + " | ".join(cells) + " |")  # fmt: skip
    if data.get("classification"):
        out += ["", "Classification (accuracy / ROC AUC / log-loss, fit seconds):", "",
                "| data (train rows) | `EigenProClassifier()` | "
                "`HistGradientBoostingClassifier()` |", "|---|---|---|"]  # fmt: skip
        for name, run in data["classification"].items():
            cells = [
                f"{r['accuracy']:.3f} / {r['roc_auc']:.3f} / {r['log_loss']:.3f} "
                f"({r['fit_seconds']:.1f} s)"
                for r in (run["models"]["EigenPro defaults"],
                          run["models"]["HistGradientBoosting defaults"])
            ]  # fmt: skip
            out.append(f"| {name} ({run['n_train']}) | " + " | ".join(cells) + " |")
    again = _load("tabular_subset")
    if again:
        out += ["", "A second run, defaults only (`tabular_subset.json`, "
                f"eigenpro {again['versions'].get('eigenpro_commit')}): " + "; ".join(
                    f"{name.split('::')[1]} `EigenProRegressor()` "
                    f"{run['models']['EigenPro defaults']['r2']:.3f} "
                    f"({run['models']['EigenPro defaults']['fit_seconds']:.1f} s)"
                    for name, run in again["regression"].items()) + "."]  # fmt: skip
    return out + ["", "![tabular](benchmarks/results/tabular.png)", ""]


def _cell(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def build() -> str:
    parts = [BEGIN, "", "_Generated by `python benchmarks/report.py` from "
             "`benchmarks/results/*.json`; do not edit by hand._", ""]  # fmt: skip
    sections = [
        ("mnist", lambda d: mnist_section(d, "MNIST, 60000 training images (CPU)")),
        ("mnist_cuda", lambda d: mnist_section(d, "MNIST on a GPU")),
        ("cifar10", cifar_section),
        ("compare", compare_section),
        ("tabular", tabular_section),
        (
            "throughput",
            lambda d: throughput_section(
                d,
                _load("throughput_before"),
                [("run 2", _load("throughput_r2"), _load("throughput_before_r2"))]
                if _load("throughput_r2")
                else (),
            ),
        ),  # fmt: skip
        (
            "throughput_intel",
            lambda d: throughput_section(
                d, None, [("run 2", _load("throughput_intel_r2"), None)], "second machine"
            ),
        ),  # fmt: skip
        ("sgd_vs_eigenpro", sgd_section),
        ("scale", scale_section),
        ("scale_mnist", scale_mnist_section),
        ("large_model", large_model_section),
        ("scale_centers", scale_centers_section),
        ("robustness", lambda d: robustness_section(d, _load("robustness_before"))),
    ]
    for name, render in sections:
        data = _load(name)
        if data is not None:
            parts += render(data)
    if (RESULTS / "spectrum.png").exists():
        parts += ["### The spectrum and its flattening", "",
                  "![spectrum](benchmarks/results/spectrum.png)", ""]  # fmt: skip
    parts.append(END)
    return "\n".join(parts)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--print", action="store_true")
    args = p.parse_args()
    section = build()
    if args.print:
        print(section)
        return
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md lacks the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + section + tail)
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
