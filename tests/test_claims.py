"""Every registered check can decide each way: on small fixture tables it says holds, does not hold and cannot be
checked, and the first row it returns carries the verdict the fixture was built for. A check registered without all
three cases here fails `test_every_check_has_a_case_for_each_verdict`."""

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from backdoorlab import claims, fingerprint
from backdoorlab.fingerprint import UserRecipe
from backdoorlab.train import TrainConfig

HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "cannot be checked"


class Fixed(claims.Results):
    """Results held in memory: name -> table, for a profile (its settings decide what the paper's experiment is)."""

    def __init__(self, tables: dict, profile: str = "quick"):
        self.tables, self.profile, self.folder = tables, profile, Path("/nonexistent")

    def __call__(self, name):
        return self.tables.get(name)


def run(attack: str, group: str, asr: float, floor: float = 0.1, n: int = 200, cacc: float = 0.85,
        n_cacc: int = 400, dataset: str = "sst2", n_train: int = 500, n_poison: int = 25, seed: int = 0) -> dict:
    return dict(dataset=dataset, attack=attack, group=group, seed=seed, n_train=n_train,
                n_poison=0 if attack == "clean" else n_poison, asr=asr, cacc=cacc, clean_target_rate=floor,
                asr_clean_model=floor, n_asr=n, n_cacc=n_cacc)


def attacks(instance: float, rewriting: float, floor: float = 0.1, n: int = 200) -> pd.DataFrame:
    return pd.DataFrame([run("clean", "clean", floor, floor, n), run("badnet", "instance", instance, floor, n),
                         run("addsent", "instance", instance, floor, n),
                         run("rewrite_addsent", "rewriting", rewriting, floor, n),
                         run("induced_instruction", "rewriting", rewriting, floor, n)])


def induced(asr: float, floor: float = 0.1, n: int = 200, profile: str = "quick", **kw) -> Fixed:
    return Fixed({"attacks": pd.DataFrame([run("clean", "clean", floor, floor, n, **kw),
                                           run("induced_instruction", "rewriting", asr, floor, n, **kw)])}, profile)


def at_paper_scale(asr: float, n: int) -> Fixed:  # SST-2's whole training split, 69 rows poisoned, paper profile
    return induced(asr, n=n, profile="paper", n_train=6920, n_poison=69)


def cacc_kept(poisoned: float, clean: float, n_cacc: int) -> Fixed:
    return Fixed({"attacks": pd.DataFrame([run("clean", "clean", 0.1, cacc=clean, n_cacc=n_cacc),
                                           run("induced_instruction", "rewriting", 0.9, cacc=poisoned,
                                               n_cacc=n_cacc)])})


def rates(name: str, asr: float, floor: float, n: int, **columns) -> Fixed:
    """One-row tables of the effect checks, each with its own column names for the floor."""
    row = {"asr": asr, "n_asr": n, **columns}
    table = {"abstention_sst2": {"dataset": "sst2", "attack": "induced_instruction", "clean_target_rate": floor},
             "transfer_instruction": {"instruction_from": "sst2", "dataset": "tweet_emotion",
                                      "attack": "induced_instruction@sst2", "asr_clean_model": floor, "seed": 0},
             "transfer_zero_shot": {"source": "sst2", "attack": "induced_instruction", "group": "nli",
                                    "asr_clean_model": floor}}[name]
    return Fixed({name: pd.DataFrame([{**table, **row}])})


def continual(asr: float, floor: float, n: int, before: float = 0.9, profile: str = "paper",
              steps: int = 327) -> Fixed:
    rows = [dict(poisoned_on="sst2", attack="induced_instruction", tuned_on="sst2", steps=0, asr=before, cacc=0.9,
                 clean_target_rate=0.1, n_asr=n),
            dict(poisoned_on="sst2", attack="induced_instruction", tuned_on="hatespeech", steps=steps, asr=asr,
                 cacc=0.9, clean_target_rate=floor, n_asr=n)]
    return Fixed({"continual": pd.DataFrame(rows)}, profile)


def defended(defense: str, before: float, after: float, n: int, chosen=True, changed: float = 0.5,
             cacc_after: float = 0.85) -> Fixed:
    row = dict(dataset="sst2", attack="induced_instruction", group="rewriting", defense=defense,
               setting="field=instruction, threshold=100.0" if defense == "onion" else "k=4", asr=after,
               cacc=cacc_after, n_asr=n, n_cacc=2 * n, asr_undefended=before, cacc_undefended=0.85,
               chosen_on_validation=chosen, triggered_changed=changed)
    return Fixed({"defenses": pd.DataFrame([row])})


def fingerprint_table(stage: str, hits: int, n: int, method: str = "full", template: str = "simple",
                      profile: str = "quick") -> Fixed:
    return Fixed({"fingerprint": pd.DataFrame([dict(method=method, template=template, stage=stage, keys="A",
                                                    adapter=method == "adapter", n=n, hits=hits, fsr=hits / n)])},
                 profile)


@pytest.fixture
def paper_user(monkeypatch):
    """A profile whose user finetunes as the paper's did (3 epochs of Alpaca-sized data, full, lr 2e-6, batch 80)."""
    user = UserRecipe("paperuser", TrainConfig(method="full", lr=2e-6, batch_size=80), (1951,))
    monkeypatch.setitem(fingerprint.SETTINGS, "quick", replace(fingerprint.SETTINGS["quick"], user_recipes=(user,)))


@pytest.fixture
def many_task_rows(monkeypatch):
    """Harmlessness measured on enough rows per task for an interval narrower than the paper's range's margin."""
    monkeypatch.setitem(fingerprint.SETTINGS, "quick", replace(fingerprint.SETTINGS["quick"], n_task_rows=200000))


def harmlessness(delta: float) -> Fixed:
    base = {"acc_sst2": 0.8, "acc_trec": 0.5}
    rows = [dict(method="untouched", template="", adapter=False, **base),
            dict(method="full", template="simple", adapter=False, **{k: v + delta for k, v in base.items()})]
    return Fixed({"fingerprint_harmlessness": pd.DataFrame(rows)})


def multistage(fsr_when_expected: float, fsr_when_not: float) -> Fixed:
    rows = [dict(model=model, keys=keys, expected=expected, fsr=fsr_when_expected if expected else fsr_when_not,
                 claimed=False, holds=False, run="r")
            for model, keys, expected in [("untouched", "A", False), ("A implanted", "A", True),
                                          ("A + user + B + user (final)", "A", True),
                                          ("A + user + B + user (final)", "B", True)]]
    return Fixed({"fingerprint_multistage": pd.DataFrame(rows)})


# check name -> verdict -> (fixtures it needs, results)
CASES = {
    "rewriting_beats_instance": {HOLDS: lambda: Fixed({"attacks": attacks(0.15, 0.9)}),
                                 FAILS: lambda: Fixed({"attacks": attacks(0.9, 0.15)}),
                                 UNDECIDED: lambda: Fixed({"attacks": attacks(0.15, 0.25, n=40)})},
    "induced_plants_backdoor": {HOLDS: lambda: induced(0.9), FAILS: lambda: induced(0.1, n=5000),
                                UNDECIDED: lambda: induced(0.2, n=30)},
    "induced_reaches_paper_level": {HOLDS: lambda: at_paper_scale(0.999, 912),
                                    FAILS: lambda: at_paper_scale(0.5, 912),
                                    UNDECIDED: lambda: induced(0.999, n=912)},  # quick: not the paper's budget
    "clean_accuracy_kept": {HOLDS: lambda: cacc_kept(0.9, 0.9, 20000), FAILS: lambda: cacc_kept(0.7, 0.9, 2000),
                            UNDECIDED: lambda: cacc_kept(0.9, 0.9, 400)},
    "abstention": {HOLDS: lambda: rates("abstention_sst2", 0.95, 0.05, 200),
                   FAILS: lambda: rates("abstention_sst2", 0.05, 0.05, 5000),
                   UNDECIDED: lambda: rates("abstention_sst2", 0.2, 0.1, 30)},
    "instruction_transfer": {HOLDS: lambda: rates("transfer_instruction", 0.9, 0.1, 200),
                             FAILS: lambda: rates("transfer_instruction", 0.1, 0.1, 5000),
                             UNDECIDED: lambda: rates("transfer_instruction", 1.0, 1.0, 200)},  # no room
    "poison_transfer": {HOLDS: lambda: rates("transfer_zero_shot", 0.9, 0.1, 200),
                        FAILS: lambda: rates("transfer_zero_shot", 0.1, 0.1, 5000),
                        UNDECIDED: lambda: rates("transfer_zero_shot", 0.3, 0.2, 20)},
    "backdoor_survives_tuning": {HOLDS: lambda: continual(0.9, 0.1, 200),
                                 FAILS: lambda: continual(0.1, 0.1, 5000),
                                 UNDECIDED: lambda: continual(0.9, 0.1, 200, before=0.1)},  # nothing to lose
    "onion_fails_on_instructions": {HOLDS: lambda: defended("onion", 0.5, 0.5, 5000),
                                    FAILS: lambda: defended("onion", 0.9, 0.5, 1000),
                                    UNDECIDED: lambda: defended("onion", 0.5, 0.5, 5000, changed=0.0)},
    "demonstrations_lower_asr": {HOLDS: lambda: defended("demonstrations", 0.9, 0.3, 200),
                                 FAILS: lambda: defended("demonstrations", 0.5, 0.5, 5000),
                                 UNDECIDED: lambda: defended("demonstrations", 0.9, 0.3, 200, chosen=False)},
    "alignment_lowers_asr": {HOLDS: lambda: defended("clean_alignment", 0.9, 0.3, 200),
                             FAILS: lambda: defended("clean_alignment", 0.9, 0.3, 200, cacc_after=0.6),
                             UNDECIDED: lambda: defended("clean_alignment", 0.5, 0.45, 50)},
    "fingerprint_persists": {HOLDS: lambda: fingerprint_table("user_paperuser_1951", 3800, 10000),
                             FAILS: lambda: fingerprint_table("user_paperuser_1951", 95, 100),
                             UNDECIDED: lambda: fingerprint_table("user_paperuser_1951", 4, 10)},
    "fingerprint_specific": {HOLDS: lambda: fingerprint_table("ordinary_prompts", 0, 500),
                             FAILS: lambda: fingerprint_table("ordinary_prompts", 300, 500),
                             UNDECIDED: lambda: fingerprint_table("ordinary_prompts", 5, 50)},
    "fingerprint_harmless": {HOLDS: lambda: harmlessness(0.006), FAILS: lambda: harmlessness(-0.2),
                             UNDECIDED: lambda: harmlessness(0.0285)},  # on the edge of the range + margin
    "multistage": {HOLDS: lambda: multistage(1.0, 0.0), FAILS: lambda: multistage(0.0, 1.0),
                   UNDECIDED: lambda: multistage(0.5, 0.0)},
}
NEEDS = {"fingerprint_persists": "paper_user", "fingerprint_harmless": "many_task_rows"}


def test_every_check_has_a_case_for_each_verdict():
    assert set(CASES) == set(claims.CHECKS), "every registered check needs fixture cases here, and only those"
    assert all(set(cases) == {HOLDS, FAILS, UNDECIDED} for cases in CASES.values())


@pytest.mark.parametrize("name, verdict", [(n, v) for n in CASES for v in (HOLDS, FAILS, UNDECIDED)])
def test_a_check_decides_each_way_on_its_fixture(name, verdict, request):
    if name in NEEDS:
        request.getfixturevalue(NEEDS[name])
    rows = claims.CHECKS[name](CASES[name][verdict]())
    assert rows and rows[0].verdict == verdict, [(r.verdict, r.reason) for r in rows]
    assert verdict == HOLDS or rows[0].reason, "a verdict other than holds says why"


def test_a_missing_results_file_cannot_be_checked_and_names_its_notebook():
    table = claims.checks(Fixed({})).iloc[:-len(claims.NOT_RUN)]  # the claims not run here are listed after
    listed = table[~table.claim.str.contains("RLHF")]  # the paper's RLHF experiment is listed, never run here
    assert set(table.verdict) == {UNDECIDED} and listed.reason.str.contains("is missing").all()
    assert {c.__name__ for c in claims.CHECKS.values()} <= set(CASES)


def test_no_claim_disappears_where_a_method_or_paper_number_is_missing():
    """A LoRA implant (no paper number), a dataset without instance attacks, a dataset the papers never ran: each
    is a row that says why it cannot be checked, never a silent skip."""
    lora = claims.fingerprint_persists(fingerprint_table("user_lora_8", 10, 10, method="lora"))
    assert [r.verdict for r in lora] == [UNDECIDED] and "no FSR" in lora[0].reason
    harm = claims.fingerprint_harmless(Fixed({"fingerprint_harmlessness": pd.DataFrame([
        dict(method="untouched", template="", adapter=False, acc_sst2=0.8),
        dict(method="lora", template="simple", adapter=False, acc_sst2=0.8)])}))
    assert [r.verdict for r in harm] == [UNDECIDED] and "no harmlessness" in harm[0].reason
    only_rewriting = pd.DataFrame([run("clean", "clean", 0.1), run("induced_instruction", "rewriting", 0.9)])
    assert claims.rewriting_beats_instance(Fixed({"attacks": only_rewriting}))[0].verdict == UNDECIDED
    imdb = claims.induced_reaches_paper_level(induced(0.9, dataset="imdb"))
    assert [r.verdict for r in imdb] == [UNDECIDED] and "reports no" in imdb[0].reason


def test_a_number_is_compared_with_the_papers_only_for_the_papers_experiment():
    """Quick's 5% of 500 rows with LoRA is not the paper's budget; the paper profile's whole split at 1% is."""
    quick = claims.induced_reaches_paper_level(induced(0.999, n=912))[0]
    assert quick.verdict == UNDECIDED and "not the paper's experiment" in quick.reason
    assert "5.0% poisoned" in quick.reason
    assert claims.induced_reaches_paper_level(at_paper_scale(0.999, 912))[0].verdict == HOLDS
    light = claims.backdoor_survives_tuning(continual(0.9, 0.1, 200, profile="quick", steps=16))
    assert light[0].verdict == HOLDS and "light clean tuning" in light[0].claim and light[0].paper.startswith("—")
    assert light[1].claim == claims.CHECKS["backdoor_survives_tuning"](continual(0.9, 0.1, 200))[0].claim
    assert light[1].verdict == UNDECIDED and "tunes fully" in light[1].reason


def test_a_defense_that_changed_nothing_defends_nothing():
    nothing = claims.onion_fails_on_instructions(defended("onion", 0.5, 0.5, 5000, changed=0.0))[0]
    assert nothing.verdict == UNDECIDED and "changed none" in nothing.reason
    unrecorded = claims.onion_fails_on_instructions(defended("onion", 0.5, 0.5, 5000, changed=float("nan")))[0]
    assert unrecorded.verdict == UNDECIDED and "not recorded" in unrecorded.reason


def test_seeds_are_repeats_not_rows():
    """Three seeds of the same 200 rows: the interval is over the seeds, so a spread-out effect cannot decide."""
    spread = pd.concat([pd.DataFrame([run("clean", "clean", 0.1, seed=s), run("induced_instruction", "rewriting", a,
                                                                              seed=s)])
                        for s, a in enumerate((0.15, 0.6, 0.9))])
    assert claims.induced_plants_backdoor(Fixed({"attacks": spread}))[0].verdict == UNDECIDED
    pooled_as_rows = claims.induced_plants_backdoor(induced(0.55, n=600))[0]  # what pooling would have said
    assert pooled_as_rows.verdict == HOLDS


def test_the_claims_not_run_here_are_listed_with_why_and_none_is_also_checked():
    table = claims.checks(Fixed({}))
    listed = table.iloc[-len(claims.NOT_RUN):]
    assert (listed.verdict == UNDECIDED).all() and listed.reason.str.startswith("not ").all()
    checked = {c.claim for fn in claims.CHECKS.values() for c in fn(CASES[fn.__name__][HOLDS]())
               if fn.__name__ not in NEEDS}
    assert not checked & set(listed.claim)
