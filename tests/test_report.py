"""The report: checks decide from intervals (and can fail), and the committed README and report.md are what the
committed results generate."""

import json
from pathlib import Path

import pandas as pd
import pytest

from backdoorlab import claims, report, score

ROOT = Path(__file__).resolve().parents[1]


class Fixed(report.Results):
    """Results held in memory: name -> table."""

    def __init__(self, tables: dict, profile: str = "quick"):
        self.tables, self.profile, self.folder = tables, profile, Path("/nonexistent")

    def __call__(self, name):
        return self.tables.get(name)


def attacks(instance_asr: float, rewriting_asr: float, floor: float = 0.1, n: int = 200) -> pd.DataFrame:
    rows = [dict(dataset="sst2", attack="clean", group="clean", seed=0, n_train=500, n_poison=0, asr=floor,
                 cacc=0.85, clean_target_rate=floor, asr_clean_model=floor, n_asr=n, n_cacc=400)]
    for group, attack, asr in [("instance", "badnet", instance_asr), ("instance", "addsent", instance_asr),
                               ("rewriting", "rewrite_addsent", rewriting_asr),
                               ("rewriting", "induced_instruction", rewriting_asr)]:
        rows.append(dict(dataset="sst2", attack=attack, group=group, seed=0, n_train=500, n_poison=25, asr=asr,
                         cacc=0.85, clean_target_rate=floor, asr_clean_model=floor, n_asr=n, n_cacc=400))
    return pd.DataFrame(rows)


def test_newcombe_interval_matches_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, table II, example (a): 56/70 - 48/80, method 10
    d, lo, hi = score.difference(56 / 70, 70, 48 / 80, 80)
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)


def test_backdoor_effect_is_asr_minus_the_clean_models_asr_its_interval_over_seeds_when_several():
    table = attacks(0.3, 0.9)
    twice = pd.concat([table, table.assign(seed=1, asr=table.asr - 0.1)])
    effects = score.backdoor_effects(twice).set_index("attack")
    assert effects.loc["induced_instruction", "effect"] == pytest.approx(0.85 - 0.1)
    # seeds score the same 200 rows: they are repeats, not 400 rows
    assert effects.loc["induced_instruction", "n_asr"] == 200 and effects.loc["badnet", "seeds"] == 2
    half = 12.7062 * 0.1 / 2 ** 0.5 / 2 ** 0.5  # t(0.975, 1) * sd of (0.8, 0.7) / sqrt(2)
    assert effects.loc["induced_instruction", "effect_hi"] == pytest.approx(0.75 + half, rel=1e-4)
    assert effects.loc["induced_instruction", "interval"] == "seeds (t)"
    one = score.backdoor_effects(table).set_index("attack").loc["induced_instruction"]
    assert (one.effect_lo, one.effect_hi) == pytest.approx(score.difference(0.9, 200, 0.1, 200)[1:])
    assert (one.asr_lo, one.asr_hi) == pytest.approx(score.wilson(180, 200))


def test_every_verdict_is_one_of_the_four():
    with pytest.raises(ValueError, match="valid choices"):
        report.Check("02", "claim", "cell", "paper", "ours", "probably")


def test_every_paper_cell_a_check_reads_is_typed_in():
    """Checks look paper numbers up by name; on the committed results none comes back missing."""
    for profile in ("quick", "extended"):
        table = report.checks(report.Results(profile, ROOT / "results" / profile))
        assert not table.paper.str.contains("nan").any() and not table.ours.str.contains("nan").any()


def test_the_committed_report_and_readme_are_what_the_committed_results_generate(monkeypatch):
    monkeypatch.setenv("BACKDOORLAB_OUT", str(ROOT))  # read the committed results, not the test's temp folder
    results = report.Results("quick", ROOT / "results" / "quick")
    committed = (ROOT / "results" / "quick" / "report.md").read_text(encoding="utf-8")
    assert committed == report.report_markdown(results), f"results/quick/report.md is stale: {report.command('quick')}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme == report.render_readme(readme, "quick"), \
        f"README.md disagrees with results/quick: {report.command('quick')} --readme"
    assert {m for m in report.BLOCK.findall(readme)} and "<!-- generated: headline -->" in readme


def test_an_unknown_readme_block_names_the_valid_ones(monkeypatch):
    monkeypatch.setenv("BACKDOORLAB_OUT", str(ROOT))
    with pytest.raises(ValueError, match="valid choices: headline"):
        report.render_readme("<!-- generated: nonsense -->\n<!-- /generated -->\n", "quick")


def test_a_dataset_the_papers_never_ran_is_reported_without_their_numbers():
    ours = Fixed({"attacks": attacks(0.1, 0.9).assign(dataset="imdb")})
    planted = claims.induced_plants_backdoor(ours)
    assert [c.paper for c in planted] == ["ASR —"] and planted[0].verdict == "holds"
    assert "—" in report.headline_table(ours, "imdb").to_string()


def test_the_cost_table_shows_each_notebook_and_the_whole_study_from_the_benchmark_files(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, record in {"notebook01_quick_cold": {"wall_s": 120.0, "peak_rss_gib": 2.0},
                         "notebook01_quick_warm": {"wall_s": 15.0, "peak_rss_gib": 0.5},
                         "study_quick": {"cold_s": 1800.0},
                         "study_quick_warm": {"warm_s": 0.02, "rerun_warm_s": 91.0}}.items():
        (raw / f"{name}.json").write_text(json.dumps(record))
    table = report.cost_table(tmp_path)
    assert "| 01 | 2.0 min (`notebook01_quick_cold.json`) | 15 s (`notebook01_quick_warm.json`) | 2.0 GiB |" in table
    assert "cold, every notebook: 30.0 min" in table and "nothing changed: 0.02 s" in table
    assert "(`make study RERUN=1`): 91 s" in table
