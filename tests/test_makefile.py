"""`make study` runs a notebook only when something it depends on changed (dry runs: nothing is executed)."""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def planned(out: Path, stamp: Path, *args: str) -> list[str]:
    """The notebooks `make -n study PROFILE=smoke` would execute, in order."""
    env = {**os.environ, "BACKDOORLAB_OUT": str(out)}
    printed = subprocess.run(["make", "-n", "study", "PROFILE=smoke", f"STAMP={stamp}", *args], cwd=ROOT, env=env,
                             check=True, capture_output=True, text=True).stdout
    return re.findall(r"-m papermill .*?notebooks/(\S+\.ipynb) ", printed)


@pytest.fixture
def study(tmp_path):
    """An output folder whose smoke study has run: every executed notebook and the report newer than the sources."""
    stamp = tmp_path / "setup-stamp"
    stamp.touch()  # set up after the requirements were written
    executed = tmp_path / "results" / "smoke" / "notebooks"
    executed.mkdir(parents=True)
    later = time.time() + 60
    for name in [*NOTEBOOKS, ".report"]:
        (executed / name).touch()
        os.utime(executed / name, (later, later))
    return tmp_path, stamp, executed


def test_a_fresh_folder_runs_every_notebook_in_order(tmp_path):
    stamp = tmp_path / "setup-stamp"
    stamp.touch()
    assert planned(tmp_path, stamp) == NOTEBOOKS


def test_an_up_to_date_study_runs_nothing_and_rerun_runs_everything(study):
    out, stamp, _ = study
    assert planned(out, stamp) == []
    assert planned(out, stamp, "RERUN=1") == NOTEBOOKS


def test_a_notebook_older_than_the_library_runs_again_and_so_does_the_report(study):
    out, stamp, executed = study
    os.utime(executed / NOTEBOOKS[2], (1, 1))
    assert planned(out, stamp) == [NOTEBOOKS[2], next(n for n in NOTEBOOKS if n.endswith("_report.ipynb"))]
