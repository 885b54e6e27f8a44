"""examples/tutorial.ipynb: saved without outputs, and runs top to bottom (small setting)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "examples" / "tutorial.ipynb"

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need nbformat")


def test_tutorial_saved_without_outputs():
    nb = nbformat.read(TUTORIAL, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the tutorial has no code cells"
    dirty = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert not dirty, (
        f"code cells {dirty} of {TUTORIAL.name} have outputs or execution counts; clear them "
        "before committing (jupyter nbconvert --clear-output --inplace examples/tutorial.ipynb)"
    )


def test_tutorial_runs(monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="executing the notebook needs nbclient")
    pytest.importorskip("ipykernel", reason="executing the notebook needs ipykernel")
    pytest.importorskip("matplotlib", reason="the tutorial's plots need matplotlib")

    # The kernel inherits os.environ: a few thousand points and few epochs.
    monkeypatch.setenv("EIGENPRO_TUTORIAL_SMALL", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # ipykernel's inline backend draws PNGs
    nb = nbformat.read(TUTORIAL, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error

    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
    printed = "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )
    assert "test accuracy" in printed
    assert "KernelRidge: accuracy" in printed
    rich = [
        output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type in ("execute_result", "display_data")
    ]
    assert any("text/html" in data for data in rich)  # the estimator's HTML repr
    assert any("image/png" in data for data in rich)  # the history and spectrum plots
    if importlib.util.find_spec("ipywidgets") is not None:  # verbose=1: tqdm's widget bar
        assert any("application/vnd.jupyter.widget-view+json" in data for data in rich)
