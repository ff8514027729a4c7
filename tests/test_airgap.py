"""Moving the study to a GPU machine without network: the model, wheels and data in transfer parts of bounded size,
checked and joined there."""

import hashlib
import importlib.util
from pathlib import Path

import pytest

from backdoorlab import airgap, data


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    manifest = airgap.bundle(out, part_mib=52, data=["sst2"], wheels=[], python="3.11")
    return out, manifest


def test_a_bundle_cuts_the_model_into_parts_under_the_limit_each_with_the_manifest(parts):
    out, manifest = parts
    folders = sorted(out.glob("part-*"))
    assert len(folders) == manifest["parts"] == 2  # 94 MiB of GGUF in two pieces; the data beside one of them
    for folder in folders:
        assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 52 * 2**20
        assert (folder / airgap.MANIFEST).exists()
    assert {n for n in manifest["files"] if n.startswith("data/")} == {
        f"data/sst2/{p.name}" for p in (data.data_dir() / "sst2").iterdir()}


def test_unbundled_parts_give_the_same_model_file_and_data_and_the_environment_to_export(parts, tmp_path):
    out, manifest = parts
    env = airgap.unbundle(sorted(out.glob("part-*")), tmp_path / "site")
    joined = tmp_path / "site" / airgap.PACKAGE / airgap.GGUF_FILE
    original = Path(importlib.util.find_spec(airgap.PACKAGE).origin).parent / airgap.GGUF_FILE
    assert sha(joined) == sha(original) == manifest["gguf"]["sha256"]
    assert (tmp_path / "site" / "data" / "sst2" / "test.jsonl").read_bytes() == \
        (data.data_dir() / "sst2" / "test.jsonl").read_bytes()
    assert env["BACKDOORLAB_DATA"] == str(tmp_path / "site" / "data")
    assert env["PYTHONPATH"].split(":")[0] == str(tmp_path / "site")


def test_a_missing_or_damaged_part_is_refused_with_what_to_copy_again(parts, tmp_path):
    out, _ = parts
    with pytest.raises(SystemExit, match=r"parts \[1\] are missing .* copy every part-<i> folder"):
        airgap.unbundle([out / "part-0"], tmp_path / "site")
    damaged = tmp_path / "part-1"
    damaged.mkdir()
    for p in (out / "part-1").iterdir():
        (damaged / p.name).write_bytes(p.read_bytes())
    piece = next(p for p in damaged.iterdir() if p.name.startswith(airgap.GGUF_FILE))
    body = piece.read_bytes()
    piece.write_bytes(body[:-1] + bytes([body[-1] ^ 0xFF]))  # one bit pattern changed, the size kept
    with pytest.raises(SystemExit, match="differ from the manifest .* copy them again"):
        airgap.unbundle([out / "part-0", damaged], tmp_path / "site")
