"""The one cache: a stage's key chains its parent's, a chain trains from whatever is saved and loads as trained, and
a probe is named by what it measured."""

import copy
from dataclasses import fields, replace

import pytest
import torch

from backdoorlab import cache, runs, score
from backdoorlab.models import TINY
from backdoorlab.runs import Tuning
from test_runs import FAST
from test_runs import config as poisoned  # an induced-instruction run of the tiny model on 24 SST-2 rows


def tuning(parent, **kw):
    return Tuning(**{"parent": parent, "data": "hatespeech", "steps": 2, "model": TINY, "train": FAST} | kw)


def count_trainings(monkeypatch) -> list:
    trained, real = [], cache.finetune

    def counting(model, tokenizer, rows, cfg, **kw):
        trained.append(len(rows))
        return real(model, tokenizer, rows, cfg, **kw)

    monkeypatch.setattr(cache, "finetune", counting)
    return trained


def test_a_stage_key_covers_every_field_and_chains_its_parents_key():
    variants = {"parent": dict(parent=poisoned(seed=1)), "data": dict(data="trec"), "steps": dict(steps=3),
                "offset": dict(offset=8), "recipe": dict(recipe="lora"), "model": dict(model="other"),
                "max_row_chars": dict(max_row_chars=200), "seed": dict(seed=1),
                "train": dict(train=replace(FAST, lr=2e-3))}
    assert set(variants) == {f.name for f in fields(Tuning)}
    keys = [tuning(poisoned()).key] + [tuning(**{"parent": poisoned()} | change).key for change in variants.values()]
    assert len(set(keys)) == len(keys)
    assert tuning(poisoned()).key == tuning(poisoned()).key
    grandchild = tuning(tuning(poisoned()), data="sst2")
    assert grandchild.key != tuning(tuning(poisoned(seed=1)), data="sst2").key  # a change two levels up reaches it
    assert [s.path.name for s in grandchild.chain()] == [poisoned().path.name, grandchild.parent.path.name,
                                                         grandchild.path.name]


def test_a_chain_trains_its_missing_ancestors_once_and_reads_finished_stages_back(run_dir, monkeypatch):
    trained = count_trainings(monkeypatch)
    child = tuning(tuning(poisoned()), data="sst2")
    cache.ensure(child, progress=False)
    assert trained == [24, 16, 16]  # the poisoned run, then each tuning's 2 steps of 8 rows
    assert all(cache.is_trained(s) for s in child.chain())
    cache.ensure(child, progress=False)
    cache.ensure(tuning(poisoned()), progress=False)
    assert len(trained) == 3
    cache.ensure(tuning(poisoned(seed=1)), progress=False)  # another parent: it and its child train
    assert len(trained) == 5


def test_a_killed_tuning_resumes_without_retraining_its_parent(run_dir, monkeypatch):
    parent = poisoned()
    cache.ensure(parent, progress=False)
    real = cache.finetune

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "finetune", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.ensure(tuning(parent), progress=False)
    assert not (tuning(parent).path / cache.WEIGHTS).exists()
    monkeypatch.setattr(cache, "finetune", real)
    trained = count_trainings(monkeypatch)
    cache.ensure(tuning(parent), progress=False)
    assert trained == [16]


def test_a_loaded_chain_is_the_model_its_last_stage_trained(run_dir, monkeypatch):
    """The child's adapter was trained on the parent merged; loading applies the parent, then the child."""
    parent = poisoned()
    child = tuning(parent)
    captured = {}
    real = cache.finetune

    def keep(model, tokenizer, rows, cfg, **kw):
        model = real(model, tokenizer, rows, cfg, **kw)
        captured["weights"] = copy.deepcopy(model).merge_and_unload().state_dict()
        return model

    cache.ensure(parent, progress=False)
    monkeypatch.setattr(cache, "finetune", keep)
    cache.ensure(child, progress=False)
    loaded, _ = cache.load(child)
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, captured["weights"][name], rtol=1e-5, atol=1e-6)
    base, _ = cache.load(cache.Base(TINY))
    assert any(not torch.equal(v, base.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_on_a_gpu_a_loaded_model_is_kept_and_each_caller_gets_its_own_copy(run_dir, monkeypatch):
    """The GPU path (here the CPU stands in for it): a second load reads nothing from disk, and what one caller does
    to its copy (a pruning defense, say) never reaches the next."""
    monkeypatch.setattr(cache, "gpu", lambda: "cpu")
    monkeypatch.setattr(cache, "_loaded", cache.OrderedDict())
    run = poisoned()
    cache.ensure(run, progress=False)
    first, _ = cache.load(run)
    reads = []
    monkeypatch.setattr(cache.models, "load_model", lambda *a, **k: reads.append(a))
    with torch.no_grad():
        next(first.parameters()).zero_()
    second, _ = cache.load(run)
    assert reads == [] and second is not first
    assert next(second.parameters()).abs().sum() > 0
    with pytest.raises(TypeError):  # another stage is read from disk (here: the stub that records the read)
        cache.load(poisoned(seed=1))
    assert len(reads) == 1


def test_a_probe_on_another_datasets_rows_never_reads_the_source_datasets_entry(run_dir, monkeypatch):
    run = poisoned()
    own = runs.evaluate(run, "test", 8)
    monkeypatch.setattr(score, "rank_scores", lambda *a, **k: pytest.fail("not scored"))
    assert runs.evaluate(run, "test", 8) == own  # read back
    monkeypatch.undo()
    monkeypatch.setenv("BACKDOORLAB_OUT", str(run_dir))
    other = runs.task_probe(run, "trec", "test", 8, "clean")
    assert other["n_cacc"] == 8 and other["target"] == "ABBR"
    names = sorted(p.name for p in run.path.glob("eval-*.json"))
    assert len(names) == 2 and any("trec" in n for n in names) and not any("sst2" in n for n in names)


def test_the_untouched_model_is_a_stage_that_never_trains(run_dir, monkeypatch):
    monkeypatch.setattr(cache, "finetune", lambda *a, **k: pytest.fail("trained the base model"))
    base = cache.Base(TINY)
    assert cache.ensure(base) == base.path and base.path.is_dir() and base.chain() == []
    metrics = runs.task_probe(base, "sst2", "test", 8, "clean")
    assert metrics["n_cacc"] == 8 and list(base.path.glob("eval-sst2-*.json"))


def test_tuning_rounds_read_successive_rows_and_rounds_chain(run_dir):
    first, second = runs.tuning_rounds(poisoned(), "sst2", (2, 5), FAST, model=TINY)
    assert (first.steps, first.offset, second.steps, second.offset) == (2, 0, 3, 16)
    assert second.parent == first and second.total_steps == 5
    rows_a, rows_b = first.training_rows()[0], second.training_rows()[0]
    assert len(rows_a) == 16 and len(rows_b) == 24
    assert {r["text"] for r in rows_a}.isdisjoint(r["text"] for r in rows_b)
    assert {r["answer"] for r in rows_a + rows_b} <= {"negative", "positive"}
    with pytest.raises(ValueError, match="unknown dataset"):
        Tuning(parent=None, data="sst3", steps=1)
    with pytest.raises(ValueError, match="steps >= 1"):
        Tuning(parent=None, data="alpaca", steps=0)


# ---- pack / unpack ----------------------------------------------------------------------------------------------

def _lab_cache(root):
    """A run cache with one finished stage (weights, record, probe), leftovers of an unfinished one, and a memo."""
    import torch
    from safetensors.torch import save_file

    stage = root / "sst2-badnet-0123456789ab"
    (stage / "weights").mkdir(parents=True)
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, stage / "weights" / "adapter_model.safetensors")
    (stage / "weights" / "adapter_config.json").write_text("{}")
    (stage / "config.json").write_text('{"attack": "badnet"}')
    (stage / "eval-test-1234.json").write_text('{"asr": 0.5}')
    (stage / "checkpoint.pt").write_bytes(b"pickle")  # an unfinished epoch's state: never packed
    (root / "sst2-clean-ba9876543210" / ".weights-tmp").mkdir(parents=True)
    (root / "memo").mkdir()
    (root / "memo" / "onion-1.json").write_text("[1, 2]")
    stage_files = ("weights/adapter_model.safetensors", "weights/adapter_config.json", "config.json",
                   "eval-test-1234.json")
    return {f"{stage.name}/{name}" for name in stage_files} | {"memo/onion-1.json"}


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_pack_and_unpack_round_trip_the_finished_entries_only(tmp_path):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    expected = _lab_cache(teacher)
    manifest = cache.pack(tmp_path / "lab.tar", teacher)
    assert set(manifest) == expected
    assert cache.unpack(tmp_path / "lab.tar", student) == len(expected)
    assert _files(student) == {k: v for k, v in _files(teacher).items() if k in expected}
    assert cache.unpack(tmp_path / "lab.tar", student) == 0  # what the cache holds is kept, nothing doubled


def _archive(path, members: dict, manifest: dict | None, links: tuple = ()):
    import io
    import json
    import tarfile

    with tarfile.open(path, "w") as tar:
        entries = ({cache.MANIFEST: json.dumps(manifest).encode()} if manifest is not None else {}) | members
        for name, body in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


@pytest.mark.parametrize("members, manifest, links, message", [
    ({"../outside.json": b"{}"}, {"../outside.json": {"size": 2, "sha256": ""}}, (), "outside the cache"),
    ({"/etc/evil.json": b"{}"}, {"/etc/evil.json": {"size": 2, "sha256": ""}}, (), "outside the cache"),
    ({}, {}, (("stage/link.json", "/etc/passwd"),), "not a plain file"),
    ({"stage/weights.pt": b"pickle"}, {"stage/weights.pt": {"size": 6, "sha256": ""}}, (), "not one of"),
    ({"stage/config.json": b"{}"}, {}, (), "not in the manifest"),
    ({"stage/config.json": b"{}"}, {"stage/config.json": {"size": 3, "sha256": ""}}, (), "the manifest says 3"),
    ({"stage/config.json": b"{}"}, {"stage/config.json": {"size": 2, "sha256": "0" * 64}}, (), "SHA-256 differs"),
    ({"stage/config.json": b"{}"}, None, (), "no MANIFEST.json"),
])
def test_unpack_refuses_an_archive_that_is_not_what_its_manifest_says(tmp_path, members, manifest, links, message):
    student = tmp_path / "student"
    archive = _archive(tmp_path / "bad.tar", members, manifest, links)
    with pytest.raises(ValueError, match=message):
        cache.unpack(archive, student)
    assert _files(student) == {} and not (tmp_path / "outside.json").exists()


def test_unpack_names_the_fix_for_a_missing_or_unreadable_archive(tmp_path):
    (tmp_path / "notes.tar").write_text("not an archive")
    for archive in (tmp_path / "missing.tar", tmp_path / "notes.tar"):
        with pytest.raises(ValueError, match="not a readable tar archive.*backdoorlab.cache pack"):
            cache.unpack(archive, tmp_path / "student")
    assert not (tmp_path / "student").exists()
