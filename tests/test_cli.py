"""The command line: documented and helpful commands, light imports, init, errors, status and export.

The CLI runs in-process (``dsbuild.cli.main``) on a real catalog built from real
photos; subprocesses only where the process itself is the subject (``python -m
dsbuild``, which modules get imported, tracebacks on stderr).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skdata

from dsbuild.pipeline import build
from dsbuild.catalog import sandboxed_query
from dsbuild.cli import COMMANDS, build_parser, main
from dsbuild.errors import DsbuildError
from dsbuild.init import STARTER
from dsbuild.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
PARSER = build_parser()  # fills COMMANDS
SUBPARSERS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices
HEAVY = ("torch", "torchvision", "fastai", "timm")

pytestmark = pytest.mark.usefixtures("wide_terminal")  # rich tables: no wrapped titles or truncated cells

MANIFEST = """\
[datasets.pets]
[datasets.pets.classes]
cat = { folders = "photos/cat" }
cup = { folders = "photos/cup" }
"""



PETS_LEFT_OUT = "not exported: 2 rejected or failed (`dsbuild status pets` counts them by reason)\n"
"""What export says it left out of the pets project (its two rejected files; trial 11 L2)."""

def make_project(root: Path) -> Path:
    """Two classes of real photo crops (64 px), one too-small image and one non-image; returns the manifest."""
    for label, arr in (("cat", skdata.chelsea()), ("cup", skdata.coffee())):
        folder = root / "photos" / label
        folder.mkdir(parents=True)
        h, w = arr.shape[:2]
        for i in range(5):
            y, x = (h - 200) * i // 4, (w - 200) * (4 - i) // 4
            Image.fromarray(arr[y : y + 200, x : x + 200]).resize((64, 64)).save(folder / f"{label}{i}.{'png' if i % 2 else 'jpg'}")
    Image.fromarray(skdata.chelsea()).resize((16, 16)).save(root / "photos/cat/tiny.png")
    (root / "photos/cup/notes.jpg").write_bytes(b"not an image\n" * 20)
    manifest = root / "datasets.toml"
    manifest.write_text(MANIFEST)
    return manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    path = make_project(tmp_path_factory.mktemp("cli"))
    build(load_manifest(path), ["pets"], workers=1)
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def python(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


# --------------------------------------------------------------------------- documented, with --help


def test_commands_are_registered() -> None:
    assert set(COMMANDS) == {"init", "build", "status", "query", "export", "train", "mislabels", "review", "retrain", "ui",
                             "predict", "demo", "embed", "similar"}
    assert set(SUBPARSERS) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(capsys, name: str) -> None:
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    out, err = capsys.readouterr()
    assert info.value.code == 0
    assert err == ""
    assert out.startswith(f"usage: dsbuild {name} ")
    assert COMMANDS[name][0] in " ".join(out.split())  # the one-line description
    for option in ("-m PATH, --manifest PATH", "--catalog PATH", "--debug", "-q, --quiet"):
        assert option in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_is_in_the_readme_table(name: str) -> None:
    assert re.search(rf"^\| `dsbuild {name}[ `]", README, re.M), f"README's command table lacks `dsbuild {name}`"


def test_readme_table_names_real_commands_and_options() -> None:
    rows = re.findall(r"^\| `dsbuild ([a-z]+)([^`]*)` \|", README, re.M)
    assert sorted(name for name, _ in rows) == sorted(COMMANDS)
    for name, synopsis in rows:
        known = {s for action in SUBPARSERS[name]._actions for s in action.option_strings}
        for option in re.findall(r"--[a-z][a-z-]*", synopsis):
            assert option in known, f"README documents `dsbuild {name} {option}`, which does not exist"


def test_top_level_help(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert out.startswith("usage: dsbuild ")
    for name, (help_text, _) in COMMANDS.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(help_text[:30])}", out, re.M), name


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    rc, out, _ = run(capsys)
    assert rc == 2
    assert out.startswith("usage: dsbuild ")


def test_bad_usage_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["query", "select 1", "--format", "xml"])
    assert info.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_version(capsys) -> None:
    from dsbuild import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"dsbuild {__version__}\n"


def test_python_m_dsbuild(tmp_path: Path) -> None:
    proc = python("-m", "dsbuild", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: dsbuild ")
    assert "Traceback" not in proc.stderr
    missing = python("-m", "dsbuild", "status", "-m", str(tmp_path / "none.toml"), cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr == (f"Error: no manifest at {tmp_path / 'none.toml'} — run `dsbuild init` to write a starter one, "
                              "or pass -m PATH\n")


# --------------------------------------------------------------------------- light imports

LIGHT = {
    "help": "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n",
    "query": "assert main(['query', '-m', sys.argv[1], 'select count(*) as n from images', '--format', 'csv']) == 0\n",
    "status": "assert main(['status', '-m', sys.argv[1]]) == 0\n",
}


@pytest.mark.parametrize("command", sorted(LIGHT))
def test_light_commands_do_not_import_torch(manifest: Path, command: str) -> None:
    code = ("import sys\nfrom dsbuild.cli import main\n" + LIGHT[command]
            + f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    proc = python("-c", code, str(manifest))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "HEAVY []"


# --------------------------------------------------------------------------- init


def test_init_writes_a_starter_that_parses(tmp_path: Path, capsys) -> None:
    path = tmp_path / "datasets.toml"
    rc, out, err = run(capsys, "init", "-m", str(path))
    assert rc == 0 and err == ""
    assert out == (f"wrote {path} and the demo's images (demo_data/digits, 1801 files) — `dsbuild build` builds the "
                   "demo dataset, `dsbuild demo` runs the whole showcase; add your datasets to the manifest\n")
    assert path.read_text(encoding="utf-8") == STARTER
    m = load_manifest(path)
    assert set(m.datasets) == {"demo"}  # what builds offline, as written
    assert m.catalog == tmp_path.resolve() / "catalog/dsbuild.duckdb"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets.toml", "demo_data"]  # no temp file, no catalog
    # The web dataset is there, commented out: uncommented as it says, it is a valid dataset.
    lines = STARTER.splitlines()
    start = lines.index("# [datasets.eyewear]")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("#"))
    web = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines[start:end])
    path.write_text(STARTER + "\n" + web + "\n")
    m = load_manifest(path)
    assert m.dataset("eyewear").labels == ["glasses", "sunglasses", "VR", "mine"]
    # The dataset you already have (trial 10: no imagefolder example): either source line, uncommented, is valid.
    start = lines.index("# [datasets.pets]")
    for source, attr in (("imagefolder", "imagefolder"), ("labels_csv", "labels_csv")):
        line = next(x for x in lines[start:] if x.startswith(f"# {source} = "))
        path.write_text(STARTER + "\n[datasets.pets]\n" + line[2:] + "\n")
        value = line[2:].split("=", 1)[1].split("#")[0].strip().strip('"')
        assert getattr(load_manifest(path).dataset("pets"), attr) == tmp_path.resolve() / value


def test_init_refuses_to_overwrite_without_force(tmp_path: Path, capsys) -> None:
    path = tmp_path / "datasets.toml"
    path.write_text("# my own manifest\n")
    rc, out, err = run(capsys, "init", "-m", str(path))
    assert rc == 2 and out == ""
    assert err == f"Error: {path} already exists — edit it, or pass --force to overwrite it\n"
    assert path.read_text() == "# my own manifest\n"
    rc, out, err = run(capsys, "init", "-m", str(path), "--force")
    assert rc == 0 and err == ""
    assert path.read_text(encoding="utf-8") == STARTER


def test_init_default_path_and_missing_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "init")[0] == 0
    assert (tmp_path / "datasets.toml").read_text(encoding="utf-8") == STARTER
    rc, _, err = run(capsys, "init", "-m", str(tmp_path / "no/such/dir/datasets.toml"))
    assert rc == 2
    assert err == f"Error: folder {tmp_path / 'no/such/dir'} does not exist — create it first\n"
    assert not (tmp_path / "no").exists()


# --------------------------------------------------------------------------- errors


def test_error_is_one_line_without_traceback(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.toml"
    rc, out, err = run(capsys, "status", "-m", str(missing))
    assert rc == 2
    assert out == ""
    assert err == f"Error: no manifest at {missing} — run `dsbuild init` to write a starter one, or pass -m PATH\n"


def test_debug_raises_with_traceback(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(DsbuildError, match="no manifest at"):
        main(["status", "-m", str(missing), "--debug"])
    with pytest.raises(DsbuildError, match="no manifest at"):
        main(["--debug", "status", "-m", str(missing)])
    proc = python("-m", "dsbuild", "status", "-m", str(missing), "--debug", cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.startswith("Traceback (most recent call last):")
    assert f"dsbuild.errors.DsbuildError: no manifest at {missing}" in proc.stderr


def test_options_before_the_command_are_kept(manifest: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """`dsbuild -m FILE CMD` and `dsbuild CMD -m FILE` are the same (the subcommand must not reset -m to its default)."""
    monkeypatch.chdir(tmp_path)  # no ./datasets.toml to fall back on
    after = run(capsys, "query", "-m", str(manifest), "select count(*) as n from images", "--format", "csv")
    before = run(capsys, "-m", str(manifest), "query", "select count(*) as n from images", "--format", "csv")
    assert after == before == (0, "n\n12\n", "")
    with pytest.raises(DsbuildError):
        main(["--debug", "-m", str(tmp_path / "nope.toml"), "status"])
    assert run(capsys, "--catalog", str(tmp_path / "other.duckdb"), "-m", str(manifest), "status")[2] == (
        f"Error: no catalog at {(tmp_path / 'other.duckdb').resolve()} — run `dsbuild build` first\n")


# --------------------------------------------------------------------------- build summary


def test_a_build_with_nothing_new_says_up_to_date_with_the_totals(tmp_path: Path, capsys) -> None:
    """A no-op build printed `processed 0 ok 0 …` beside the split totals, which read as an empty dataset: it says
    `up to date` with the catalog's numbers; a build that processes or changes anything keeps the table."""
    path = make_project(tmp_path)
    assert main(["-q", "build", "-m", str(path)]) == 0
    first = capsys.readouterr().out
    assert "│ pets " in first and "up to date" not in first
    rc, out, err = run(capsys, "-q", "build", "-m", str(path))
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert re.fullmatch(rf"build 2 — \d+\.\d s — {re.escape(str(load_manifest(path).catalog))}", lines[0])
    assert lines[1] == "pets: up to date — 10 accepted images (train 8, valid 2); nothing new in 12 sources"
    assert "processed" not in out and "│" not in out
    # a new photo: processed, so the table again
    Image.open(tmp_path / "photos/cat/cat0.jpg").rotate(90).save(tmp_path / "photos/cat/cat9.png")
    rc, out, _ = run(capsys, "-q", "build", "-m", str(path))
    assert rc == 0 and "up to date" not in out
    header = next(line for line in out.splitlines() if "processed" in line)
    row = next(line for line in out.splitlines() if line.startswith("│ pets"))
    table = dict(zip([c.strip() for c in header.strip("┃ ").split("┃")], [c.strip() for c in row.strip("│ ").split("│")]))
    assert (table["processed"], table["ok"]) == ("1", "1")
    # a source taken away changes the catalog (set aside) though nothing is processed: the table, and the note
    (tmp_path / "photos/cat/cat9.png").unlink()
    rc, out, _ = run(capsys, "-q", "build", "-m", str(path))
    assert rc == 0 and "up to date" not in out and "│ pets" in out and "set aside" in out


# --------------------------------------------------------------------------- status


def _table_rows(text: str, first: str) -> dict[str, list[str]]:
    """Rows of the rich table whose header starts with ``first``: {first cell: other cells}, header under ''."""
    rows: dict[str, list[str]] = {}
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^┃ {first}\s", line))
    rows[""] = [c.strip() for c in lines[start].strip("┃").split("┃")][1:]
    for line in lines[start + 2 :]:
        if not line.startswith("│"):
            break
        cells = [c.strip() for c in line.strip("│").split("│")]
        rows[cells[0]] = cells[1:]
    return rows


def test_status_table(manifest: Path, capsys) -> None:
    rc, out, err = run(capsys, "status", "-m", str(manifest))
    assert rc == 0 and err == ""
    assert re.match(r"^last build #1 \(pets\) started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: ok$", out.splitlines()[0])
    assert "pets: images by label × split × status" in out
    table = _table_rows(out, "label")
    assert table[""] == ["train ok", "valid ok", "rejected"]
    counts = sandboxed_query(load_manifest(manifest).catalog,
                             "select label, coalesce(split, '*') as split, status, count(*) as n from images group by all")
    for label in ("cat", "cup"):
        want = {f"{r.split} ok" if r.status == "ok" else r.status: r.n for r in counts.itertuples() if r.label == label}
        got = {col: int(v) for col, v in zip(table[""], table[label]) if v != "·"}
        assert got == want
    assert table["total"] == ["8", "2", "2"]
    assert "pets: rejected / failed by reason" in out
    rejects = _table_rows(out, "status")
    assert rejects[""] == ["reason", "images"]
    reasons = [line for line in out.splitlines() if line.startswith("│ rejected")]
    assert [[c.strip() for c in r.strip("│").split("│")] for r in reasons] == [
        ["rejected", "not an image", "1"], ["rejected", "too small", "1"]]


def test_status_of_one_dataset_and_unknown_ones(manifest: Path, capsys) -> None:
    assert run(capsys, "status", "-m", str(manifest), "pets")[0] == 0
    # A name in neither the catalog nor the manifest is a typo (issue 12), not a dataset to build.
    rc, out, err = run(capsys, "status", "-m", str(manifest), "pest")
    assert rc == 2 and out == ""  # bad usage, as README's exit codes say (a fresh-user trial found 1)
    assert err == "Error: no dataset 'pest' in datasets.toml (did you mean 'pets'?) — known datasets: pets\n"
    # A dataset of the manifest that was never built: build it.
    other = manifest.with_name("two.toml")
    other.write_text(manifest.read_text() + '[datasets.mugs.classes]\na = { folders = "photos/cat" }\n'
                     'b = { folders = "photos/cup" }\n')
    rc, out, err = run(capsys, "status", "-m", str(other), "mugs")
    assert rc == 1 and out == ""
    assert err == "Error: dataset 'mugs' is not in the catalog — built datasets: pets; run `dsbuild build mugs`\n"


def test_status_without_a_catalog(tmp_path: Path, capsys) -> None:
    path = tmp_path / "datasets.toml"
    path.write_text(MANIFEST)
    rc, out, err = run(capsys, "status", "-m", str(path))
    assert rc == 1 and out == ""
    assert err == f"Error: no catalog at {tmp_path.resolve()}/catalog/dsbuild.duckdb — run `dsbuild build` first\n"
    assert not (tmp_path / "catalog").exists()


# --------------------------------------------------------------------------- export


def _ok_images(manifest: Path):
    return sandboxed_query(load_manifest(manifest).catalog,
                           "select image_id, label, split, path, sha256 from images where dataset = 'pets' and status = 'ok'")


def test_export_imagefolder(manifest: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "out"
    rc, out, err = run(capsys, "export", "-m", str(manifest), "pets", "--to", str(out_dir))
    assert rc == 0 and err == ""
    assert out == f"exported 10 images of 'pets' to {out_dir} (imagefolder; train 8, valid 2)\n" + PETS_LEFT_OUT
    ok = _ok_images(manifest)
    files = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file() and p.parent != out_dir)
    want = sorted(f"{r.split}/{r.label}/{r.image_id}{Path(r.path).suffix}" for r in ok.itertuples())
    assert files == want
    for r in ok.itertuples():
        exported = out_dir / r.split / r.label / f"{r.image_id}{Path(r.path).suffix}"
        assert exported.read_bytes() == Path(r.path).read_bytes()
    with open(out_dir / "labels.csv", newline="") as fh:
        index = list(csv.DictReader(fh))
    assert sorted(row["path"] for row in index) == want
    # exporting again over a previous export replaces it
    assert run(capsys, "export", "-m", str(manifest), "pets", "--to", str(out_dir))[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_csv(manifest: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "index"
    rc, out, _ = run(capsys, "export", "-m", str(manifest), "pets", "--to", str(out_dir), "--format", "csv")
    assert rc == 0
    assert out.startswith("exported 10 images of 'pets' to ")
    with open(out_dir / "pets.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == ["image_id", "path", "label", "split", "origin", "sha256"]
    ok = _ok_images(manifest)
    assert sorted((r["image_id"], r["label"], r["split"], r["sha256"]) for r in rows) == sorted(
        (r.image_id, r.label, r.split, r.sha256) for r in ok.itertuples())
    assert all(Path(r["path"]).is_file() for r in rows)


def test_export_csv_to_a_csv_path_writes_that_file(manifest: Path, tmp_path: Path, capsys) -> None:
    """`--format csv --to index.csv` is the file itself (as pandas/img2dataset users expect), not a folder named
    index.csv; exporting again replaces a previous export, and a file dsbuild did not write is never overwritten."""
    target = tmp_path / "sub" / "index.csv"
    rc, out, err = run(capsys, "export", "-m", str(manifest), "pets", "--to", str(target), "--format", "csv")
    assert (rc, err) == (0, "")
    assert out == f"exported 10 images of 'pets' to {target} (csv; train 8, valid 2)\n" + PETS_LEFT_OUT
    assert target.is_file()
    with open(target, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == ["image_id", "path", "label", "split", "origin", "sha256"]
    assert sorted(r["image_id"] for r in rows) == sorted(_ok_images(manifest)["image_id"])
    assert sorted(p.name for p in target.parent.iterdir()) == ["index.csv"]  # no temp file left beside it
    # again over its own previous export: replaced
    assert run(capsys, "export", "-m", str(manifest), "pets", "--to", str(target), "--format", "csv")[0] == 0
    assert target.read_text().count("\n") == 11
    # a .csv that dsbuild did not write is kept
    mine = tmp_path / "mine.csv"
    mine.write_text("a,b\n1,2\n")
    rc, out, err = run(capsys, "export", "-m", str(manifest), "pets", "--to", str(mine), "--format", "csv")
    assert (rc, out) == (1, "")
    assert err == (f"Error: {mine} exists and is not a dsbuild csv export — choose a new file, or a folder "
                   "(--to DIR writes DIR/pets.csv)\n")
    assert mine.read_text() == "a,b\n1,2\n"


def test_export_imagefolder_refuses_a_csv_path(manifest: Path, tmp_path: Path, capsys) -> None:
    """`--to out.csv` without `--format csv` made a folder named out.csv/: refused, saying what --to means."""
    rc, out, err = run(capsys, "export", "-m", str(manifest), "pets", "--to", str(tmp_path / "out.csv"))
    assert (rc, out) == (1, "")
    assert err == ("Error: --to out.csv names a .csv file, but --format imagefolder writes a folder "
                   "(out.csv/<split>/<label>/…) — add --format csv to write the index to out.csv, or give --to a "
                   "folder path\n")
    assert list(tmp_path.iterdir()) == []


def test_export_help_says_what_to_means(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--to DIR|FILE.csv" in text
    assert "with --format csv, a path ending in .csv is the CSV file itself (else DIR/DATASET.csv, beside whatever " \
           "DIR holds)" in text
    assert ("a previous export: exporting the same dataset in the same format again replaces only what that export "
            "wrote — models/, export.pkl and other files stay — and is refused, changing nothing, where it would "
            "overwrite anything else") in text


def test_export_unknown_dataset_names_the_known_ones(manifest: Path, tmp_path: Path, capsys) -> None:
    rc, out, err = run(capsys, "export", "-m", str(manifest), "pest", "--to", str(tmp_path / "out"))
    assert rc == 2 and out == ""
    assert err == "Error: no dataset 'pest' in datasets.toml (did you mean 'pets'?) — known datasets: pets\n"
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_foreign_folder(manifest: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    rc, _, err = run(capsys, "export", "-m", str(manifest), "pets", "--to", str(tmp_path))
    assert rc == 1
    assert err == f"Error: {tmp_path} is not empty and is not a dsbuild export — choose an empty or new folder\n"
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_csv_export_to_a_folder_of_the_users_writes_dataset_csv_beside_its_files(manifest: Path, tmp_path: Path,
                                                                               capsys) -> None:
    """`--format csv --to DIR` writes DIR/DATASET.csv "beside whatever DIR holds" (--help) — a trial found it refused
    for any non-empty folder without a marker, `--to .` in the project folder included (it holds the source
    folders, but no build reads a CSV as an image). A user's own DATASET.csv there is never overwritten."""
    (tmp_path / "notes.txt").write_text("mine")
    rc, out, err = run(capsys, "export", "-m", str(manifest), "pets", "--format", "csv", "--to", str(tmp_path))
    assert (rc, err) == (0, "")
    assert out == f"exported 10 images of 'pets' to {tmp_path / 'pets.csv'} (csv; train 8, valid 2)\n" + PETS_LEFT_OUT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "pets.csv"]  # no marker in a user's folder
    with open(tmp_path / "pets.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 10
    rc, out, err = run(capsys, "export", "-m", str(manifest), "pets", "--format", "csv", "--to", str(tmp_path))
    assert (rc, err) == (0, "") and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "pets.csv"]

    root = manifest.parent.resolve()
    before = sorted(p.relative_to(root) for p in root.rglob("*") if "catalog" not in p.parts)
    try:
        rc, out, err = run(capsys, "export", "-m", str(manifest), "pets", "--format", "csv", "--to", str(root))
        assert (rc, err) == (0, "")
        assert out == f"exported 10 images of 'pets' to {root / 'pets.csv'} (csv; train 8, valid 2)\n" + PETS_LEFT_OUT
        after = sorted(p.relative_to(root) for p in root.rglob("*") if "catalog" not in p.parts)
        assert after == sorted([*before, Path("pets.csv")])
    finally:
        (root / "pets.csv").unlink(missing_ok=True)

    (tmp_path / "pets.csv").write_text("my own table\n")
    rc, out, err = run(capsys, "export", "-m", str(manifest), "pets", "--format", "csv", "--to", str(tmp_path))
    assert (rc, out) == (1, "")
    assert err == (f"Error: {tmp_path / 'pets.csv'} exists and is not a dsbuild csv export — move it out of "
                   f"{tmp_path}, or choose another --to (nothing was changed)\n")
    assert (tmp_path / "pets.csv").read_text() == "my own table\n"
    rc, _, err = run(capsys, "export", "-m", str(manifest), "pets", "--to", str(tmp_path))  # a tree: still refused
    assert rc == 1 and err == f"Error: {tmp_path} is not empty and is not a dsbuild export — choose an empty or new folder\n"


# ------------------------------------------------- export into a folder that holds more than the export
# A trial (issue: HIGH, lost user files): exporting again into an earlier export folder deleted everything in it —
# fastai's models/ and export.pkl, another dataset's CSV, and the ImageFolder tree on a CSV export.

MORE = '[datasets.more.classes]\nkitten = { folders = "photos/cat" }\nmug = { folders = "photos/cup" }\n'


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    """A project with two built datasets, pets and more (the same photos under other class names)."""
    path = make_project(tmp_path_factory.mktemp("two"))
    path.write_text(MANIFEST + MORE)
    build(load_manifest(path), ["pets", "more"], workers=1)
    return path


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (hidden ones too): a file's bytes, None for a folder."""
    return {p.relative_to(folder).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in folder.rglob("*")}


def image_tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.glob("*/*/*") if p.is_file())


def catalog_tree(manifest: Path) -> list[str]:
    return sorted(f"{r.split}/{r.label}/{r.image_id}{Path(r.path).suffix}" for r in _ok_images(manifest).itertuples())


def fastai_files(out: Path) -> None:
    """What fastai's learn.save()/learn.export() put into a learner whose path is the exported folder."""
    (out / "models").mkdir()
    (out / "models" / "stage1.pth").write_bytes(b"weights")
    (out / "export.pkl").write_bytes(b"model")


def test_reexport_replaces_only_its_own_tree_and_follows_the_review(tmp_path: Path, capsys) -> None:
    """fastai trains on the export and saves models/ and export.pkl into it; after a review the same export
    again keeps them, and the tree is the catalog's accepted images (relabelled one moved, removed one gone)."""
    import dsbuild
    from dsbuild.decisions import Decision

    path = make_project(tmp_path / "p")
    build(load_manifest(path), ["pets"], workers=1)
    out = tmp_path / "out"
    assert run(capsys, "export", "-m", str(path), "pets", "--to", str(out))[0] == 0
    fastai_files(out)
    (out / "notes.txt").write_text("lr 1e-3 was best")
    before = _ok_images(path)
    cat_id, cup_id = before[before.label == "cat"].image_id.iloc[0], before[before.label == "cup"].image_id.iloc[0]
    dsbuild.review(load_manifest(path), "pets", decisions=[Decision(image_id=cat_id, action="relabel", new_label="cup"),
                                                           Decision(image_id=cup_id, action="remove")])
    rc, text, err = run(capsys, "export", "-m", str(path), "pets", "--to", str(out))
    assert (rc, err) == (0, "")
    now = _ok_images(path)
    splits = ", ".join(f"{k} {v}" for k, v in sorted(now.split.value_counts().items()))
    assert text == (f"exported 9 images of 'pets' to {out} (imagefolder; {splits})\n"
                    "not exported: 1 removed in review, 2 rejected or failed (`dsbuild status pets` counts them by "
                    "reason)\n"
                    f"left 3 other entries in {out} untouched: export.pkl, models/, notes.txt\n")
    assert image_tree(out) == catalog_tree(path)
    assert any(f.endswith(f"/cup/{cat_id}{Path(before.set_index('image_id').path[cat_id]).suffix}") for f in image_tree(out))
    assert not any(cup_id in f for f in image_tree(out))
    assert (out / "models" / "stage1.pth").read_bytes() == b"weights" and (out / "export.pkl").read_bytes() == b"model"
    assert (out / "notes.txt").read_text() == "lr 1e-3 was best"
    assert sorted(p.name for p in out.iterdir()) == [".dsbuild-export", "export.pkl", "labels.csv", "models",
                                                     "notes.txt", "train", "valid"]  # no work folder left
    with open(out / "labels.csv", newline="") as fh:
        assert sorted(r["path"] for r in csv.DictReader(fh)) == catalog_tree(path)


def test_csv_exports_go_beside_an_image_export_and_each_other(two: Path, tmp_path: Path, capsys) -> None:
    """--format csv --to DIR adds DIR/DATASET.csv: two datasets' CSVs and an ImageFolder tree share one folder."""
    out = tmp_path / "out"
    assert run(capsys, "export", "-m", str(two), "pets", "--to", str(out))[0] == 0
    fastai_files(out)
    tree = snapshot(out)
    rc, text, err = run(capsys, "export", "-m", str(two), "pets", "--to", str(out), "--format", "csv")
    assert (rc, err) == (0, "")
    assert text == (f"exported 10 images of 'pets' to {out} (csv; train 8, valid 2)\n" + PETS_LEFT_OUT +
                    f"left 5 other entries in {out} untouched: export.pkl, labels.csv, models/, train/, valid/\n")
    rc, text, err = run(capsys, "export", "-m", str(two), "more", "--to", str(out), "--format", "csv")
    assert (rc, err) == (0, "")
    assert text.endswith(f"left 6 other entries in {out} untouched: export.pkl, labels.csv, models/, pets.csv, "
                         "train/, valid/\n")
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k not in (".dsbuild-export", "pets.csv", "more.csv")} == \
           {k: v for k, v in tree.items() if k != ".dsbuild-export"}
    for name in ("pets", "more"):
        with open(out / f"{name}.csv", newline="") as fh:
            assert len(list(csv.DictReader(fh))) == 10
    # each export again replaces its own entries only
    assert run(capsys, "export", "-m", str(two), "pets", "--to", str(out))[0] == 0
    assert capsys.readouterr() == ("", "")
    assert snapshot(out).keys() == after.keys() and (out / "more.csv").read_bytes() == after["more.csv"]


def test_an_export_never_overwrites_what_another_export_or_the_user_owns(two: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert run(capsys, "export", "-m", str(two), "pets", "--to", str(out))[0] == 0
    tree = snapshot(out)
    rc, text, err = run(capsys, "export", "-m", str(two), "more", "--to", str(out))
    assert (rc, text) == (1, "")
    assert err == (f"Error: {out}/labels.csv belongs to the imagefolder export of 'pets' in {out}, which the "
                   "imagefolder export of 'more' would overwrite — choose another --to (nothing was changed)\n")
    assert snapshot(out) == tree
    (out / "more.csv").write_text("my own notes\n")
    rc, text, err = run(capsys, "export", "-m", str(two), "more", "--to", str(out), "--format", "csv")
    assert (rc, text) == (1, "")
    assert err == (f"Error: {out}/more.csv was not written by dsbuild and the csv export of 'more' would overwrite "
                   f"it — move it out of {out} or choose another --to (nothing was changed)\n")
    assert (out / "more.csv").read_text() == "my own notes\n"
    # a file put inside the export's own tree is not its to delete: the re-export is refused, naming it
    (out / "more.csv").unlink()
    (out / "train" / "cat" / "mine.jpg").write_bytes(b"my photo")
    tree = snapshot(out)
    rc, text, err = run(capsys, "export", "-m", str(two), "pets", "--to", str(out))
    assert (rc, text) == (1, "")
    assert err == (f"Error: {out} holds 1 file that the previous imagefolder export of 'pets' did not write, inside "
                   f"what it wrote: train/cat/mine.jpg — move it out of {out} (or export to a new folder); nothing "
                   "was changed\n")
    assert snapshot(out) == tree


def test_a_folder_an_earlier_dsbuild_exported_to_is_replaced_conservatively(two: Path, tmp_path: Path, capsys) -> None:
    """Earlier versions' marker holds only the dataset name: the old export owns what the format always writes
    (labels.csv and the split folders it lists, each file one it lists) and nothing else."""
    out = tmp_path / "out"
    assert run(capsys, "export", "-m", str(two), "pets", "--to", str(out))[0] == 0
    (out / ".dsbuild-export").write_text("pets\n")  # what earlier versions wrote; the tree is the same
    fastai_files(out)
    rc, text, err = run(capsys, "export", "-m", str(two), "pets", "--to", str(out))
    assert (rc, err) == (0, "")
    assert text == (f"exported 10 images of 'pets' to {out} (imagefolder; train 8, valid 2)\n" + PETS_LEFT_OUT +
                    f"{out}/.dsbuild-export was written by an earlier dsbuild and names only the dataset: replaced "
                    "only what that export always writes (labels.csv, train, valid); it now lists every file this "
                    "export wrote\n"
                    f"left 2 other entries in {out} untouched: export.pkl, models/\n")
    assert (out / "models" / "stage1.pth").read_bytes() == b"weights" and (out / "export.pkl").read_bytes() == b"model"
    assert image_tree(out) == catalog_tree(two)
    assert (out / ".dsbuild-export").read_text().startswith('{"dsbuild_export":2,')
    # an old export's split folder holding a file its labels.csv does not list: refused, nothing changed
    (out / ".dsbuild-export").write_text("pets\n")
    (out / "valid" / "cup" / "extra.png").write_bytes(b"mine")
    tree = snapshot(out)
    rc, text, err = run(capsys, "export", "-m", str(two), "pets", "--to", str(out))
    assert (rc, text) == (1, "")
    assert err == (f"Error: {out} holds 1 file that the previous imagefolder export of 'pets' did not write, inside "
                   f"what it wrote: valid/cup/extra.png — move it out of {out} (or export to a new folder); nothing "
                   "was changed\n")
    assert snapshot(out) == tree
    # an old CSV export folder: DATASET.csv with the exporter's header is the old export's, the rest is not
    idx = tmp_path / "idx"
    assert run(capsys, "export", "-m", str(two), "more", "--to", str(idx), "--format", "csv")[0] == 0
    (idx / ".dsbuild-export").write_text("more\n")
    (idx / "mine.csv").write_text("a,b\n")
    rc, text, err = run(capsys, "export", "-m", str(two), "more", "--to", str(idx), "--format", "csv")
    assert (rc, err) == (0, "")
    assert text.endswith(f"replaced only what that export always writes (more.csv); it now lists every file this "
                         f"export wrote\nleft 1 other entry in {idx} untouched: mine.csv\n")
    assert sorted(p.name for p in idx.iterdir()) == [".dsbuild-export", "mine.csv", "more.csv"]


def cli_script(mode: str, arm: str) -> str:
    """A program for ``python -c``: ``ARGV[1] MODE ARGS…`` runs ``arm`` (code lines, with os, resource, signal, sys and
    Path imported) when MODE is ``mode``, then the dsbuild CLI on ARGS."""
    return ("import os, resource, signal, sys\nfrom pathlib import Path\nfrom dsbuild.cli import main\n"
            f"if sys.argv[1] == {mode!r}:\n" + textwrap.indent(arm, "    ") + "sys.exit(main(sys.argv[2:]))\n")


def test_an_interrupted_export_leaves_the_previous_one_as_it_was(two: Path, tmp_path: Path) -> None:
    """A write that fails half way (here: a file-size limit, so labels.csv cannot be written after the images
    are linked) leaves the previous export, and the user's files, exactly as they were, and no work folder."""
    out = tmp_path / "out"
    code = cli_script("limit", "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                               "resource.setrlimit(resource.RLIMIT_FSIZE, (256, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n")
    args = ["export", "-m", str(two), "pets", "--to", str(out)]
    assert python("-c", code, "free", *args).returncode == 0
    fastai_files(out)
    tree = snapshot(out)
    done = python("-c", code, "limit", *args)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (f"Error: the imagefolder export of 'pets' failed: File too large — {out} is unchanged; "
                           "free some space (or fix what the error names) and export again\n")
    assert snapshot(out) == tree
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_export_killed_mid_swap_leaves_work_folders_the_next_export_deletes(two: Path, tmp_path: Path) -> None:
    """SIGKILL (no cleanup runs) after the previous export's first entry was moved aside: the new tree's work folder
    and the moved-aside entries stay in the folder (a whole copy of the dataset). The next export deletes what a dead
    process left, says so, and leaves a work folder of a running process and the user's files alone."""
    out = tmp_path / "out"
    code = cli_script("kill", "rename, moves = Path.rename, []\n"
                              "def killed_on_the_second_move(self, target):\n"
                              "    moves.append(target)\n"
                              "    if len(moves) == 2:\n"
                              "        os.kill(os.getpid(), signal.SIGKILL)\n"
                              "    return rename(self, target)\n"
                              "Path.rename = killed_on_the_second_move\n")
    args = ["export", "-m", str(two), "pets", "--to", str(out)]
    assert python("-c", code, "free", *args).returncode == 0
    fastai_files(out)
    killed = python("-c", code, "kill", *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = sorted(p.name.split("-")[2] for p in out.iterdir() if p.name.startswith(".dsbuild-export-"))
    assert left == ["new", "old"]  # what the kill left: the new tree, and the entry moved aside
    running = out / f".dsbuild-export-new-{os.getppid()}-0123abcd"  # a live process's (pytest's parent)
    running.mkdir()

    again = python("-c", code, "free", *args)
    assert again.returncode == 0, again.stderr
    said = " ".join(again.stdout.split())
    assert re.search(r"deleted 2 work entries left by an export that was killed before it finished: "
                     r"\.dsbuild-export-new-\d+-[0-9a-f]{8}, \.dsbuild-export-old-\d+-[0-9a-f]{8}", said), said
    splits = {r.split for r in _ok_images(two).itertuples()}
    assert {p.name for p in out.iterdir()} == {".dsbuild-export", running.name, "export.pkl", "labels.csv", "models",
                                               *splits}
    assert image_tree(out) == catalog_tree(two)
    assert (out / "export.pkl").read_bytes() == b"model"


def test_status_html_shows_duplicate_groups_and_conflicts(tmp_path: Path, capsys) -> None:
    path = make_project(tmp_path)
    photos = tmp_path / "photos"
    shutil.copyfile(photos / "cat/cat0.jpg", photos / "cup/cat0-as-cup.jpg")  # the same picture under two labels
    Image.open(photos / "cat/cat1.png").resize((48, 48)).save(photos / "cat/cat1-small.jpg", quality=85)  # near copy
    assert main(["-q", "build", "-m", str(path)]) == 0
    capsys.readouterr()
    out = tmp_path / "dups.html"
    rc, text, err = run(capsys, "status", "-m", str(path), "pets", "--html", str(out))
    assert rc == 0, err
    assert text == f"wrote {out} (2 duplicate groups, label conflicts first)\n"
    page = out.read_text(encoding="utf-8")
    assert page.count('<section class="group') == 2
    conflict = page.index("label conflict: cat ≠ cup")
    assert conflict < page.index('<section class="group"')  # conflicts come first
    assert page.count("<img") == 4 and "data:image/" in page
    rc, _, err = run(capsys, "status", "-m", str(path), "--html", str(out))
    assert rc == 2 and err.startswith("Error: --html needs a DATASET")


@pytest.mark.parametrize(("to", "fmt", "where"), [
    ("photos/cat/exported", "imagefolder", "is inside {cat},"),
    ("photos/cat", "imagefolder", "is"),
    ("photos/cup/sub/index.csv", "csv", "is inside {cup},"),
    ("photos", "imagefolder", "holds {cat},"),
], ids=["inside", "equal", "csv-inside", "holds"])
def test_export_refuses_a_source_folder_of_the_manifest(manifest: Path, capsys, to: str, fmt: str, where: str) -> None:
    """An export inside a class folder is read back by the next build as new images of that class (a trial:
    180 exported copies imported, 150 label conflicts): refused before anything is written."""
    root = manifest.parent.resolve()
    cat, cup = root / "photos" / "cat", root / "photos" / "cup"
    before = sorted(p for p in (root / "photos").rglob("*"))
    rc, out, err = run(capsys, "export", "-m", str(manifest), "pets", "--to", str(root / to), "--format", fmt)
    assert (rc, out) == (1, "")
    owner = "cup" if "cup" in to else "cat"
    assert err == (f"Error: --to {root / to} {where.format(cat=cat, cup=cup)} a source folder of class '{owner}' of "
                   "dataset 'pets': the next build would read the export back as new images — choose a --to outside "
                   "the manifest's source folders\n")
    assert sorted(p for p in (root / "photos").rglob("*")) == before  # nothing written, nothing replaced


def test_export_formats_are_the_registry(capsys) -> None:
    from dsbuild.exporters import EXPORTERS

    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "d", "--to", "out", "--format", "nope"])
    listed = ", ".join(repr(name) for name in EXPORTERS)
    assert f"invalid choice: 'nope' (choose from {listed})" in capsys.readouterr().err


def test_demo_score_counts_planted_wrong_labels_found_in_label_conflicts(tmp_path: Path) -> None:
    """A planted wrong label that is a near copy of a digit of its true class is a duplicate in a label conflict,
    not a scored flag: the demo says so instead of calling it missed (seen with the default dedup settings)."""
    from dsbuild.demo.steps import planted_scores

    (tmp_path / "TRUTH.csv").write_text("file,true_label,given_label,planted\n"
                                        "eight/a.png,six,eight,True\nthree/b.png,one,three,True\n"
                                        "one/c.png,one,one,False\nsix/d.png,six,six,False\n")
    path = {name: str((tmp_path / name).resolve()) for name in ("eight/a.png", "three/b.png", "one/c.png", "six/d.png")}
    score = planted_scores({path["eight/a.png"], path["one/c.png"]}, tmp_path, {path["three/b.png"], path["one/c.png"]})
    assert score == {"planted": 2, "found": 1, "flags": 2, "false_flags": 1, "in_conflicts": 1}
    assert planted_scores({path["eight/a.png"]}, tmp_path)["in_conflicts"] == 0


def test_demo_says_whether_the_cycle_changed_the_accuracy_by_an_exact_mcnemar_test() -> None:
    """The demo's last line: 99.16 % → 98.60 % on 357 digits is 2 images either way — the retrained model is compared
    with the first on the same images (exact McNemar on the images they disagree on), not called a loss."""
    from dsbuild.demo.steps import cycle_change, mcnemar_exact

    # Binomial(n, ½) tails by hand: 2 vs 0 → 2·¼; 3 vs 1 → 2·5/16; 1 vs 9 → 2·11/1024; none → 1.
    assert [mcnemar_exact(*wb) for wb in ((2, 0), (3, 1), (1, 9), (0, 0))] == [0.5, 0.625, 22 / 1024, 1.0]
    before = {f"i{k}": True for k in range(355)} | {"x": False, "y": False}
    after = dict(before, x=True, i0=False, i1=False, i2=False)
    assert cycle_change(before, after) == ("the two models disagree on 4 of 357 valid images — 1 now right, 3 now "
                                           "wrong; exact McNemar p = 0.62: no evidence of a change either way")
    after = dict(before, **{f"i{k}": False for k in range(10)})
    assert cycle_change(before, after).endswith("0 now right, 10 now wrong; exact McNemar p = 0.00: a real loss")


# --------------------------------------------------------------------------- a stop CPython swallowed

# A command whose body meets a real signal inside a weakref callback, as `train` does when Ctrl-C lands while
# torch imports (importlib's _get_module_lock callback): the handler's KeyboardInterrupt is raised in the callback,
# where CPython prints "Exception ignored in …" and drops it. The command then waits up to 20 s.
_SWALLOWED_STOP = """
import signal, sys, time, weakref
from dsbuild import cli

def swallowed_stop(args):
    class Thing:
        pass
    def callback(_):
        signal.raise_signal(signal.{sig})
        for _ in range(1000):  # the Python-level handler runs here, inside the callback
            pass
    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.01)
    print("the stop was lost")
    return 0

cli.cmd_status = swallowed_stop
sys.exit(cli.main(["status"]))
"""


@pytest.mark.parametrize("sig, code, message", [
    ("SIGINT", 130, "Error: interrupted\n"),
    ("SIGTERM", 143, "Error: terminated (SIGTERM) — everything finished so far is kept; run the command again\n"),
])
def test_a_stop_swallowed_by_a_callback_is_delivered_again(tmp_path: Path, sig: str, code: int, message: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _SWALLOWED_STOP.replace("{sig}", sig)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
    assert (proc.returncode, proc.stdout, proc.stderr) == (code, "", message)


def test_the_mislabel_title_counts_outliers_apart_from_wrong_labels() -> None:
    """Fresh-user trial 8: 2 wrong labels and 27 outliers were titled "29 likely label problems" — an outlier fits
    no class; it is not a label a person should change."""
    import pandas as pd

    from dsbuild.cli import mislabels_title

    flags = pd.DataFrame({"kind": ["label"] * 2 + ["outlier"] * 27 + ["conflict"]})
    assert mislabels_title(flags, "pets", "r1") == ("30 flagged images in 'pets' (run r1): 2 likely wrong labels, "
                                                    "1 label conflict, 27 outliers")
    assert mislabels_title(flags[:2], "pets", "r1") == "2 likely label problems in 'pets' (run r1)"
    assert mislabels_title(flags[:0], "pets", "r1") == "0 likely label problems in 'pets' (run r1)"


def test_export_counts_what_it_leaves_out_but_not_rows_set_aside_with_their_source() -> None:
    """Trial 11 L2/M4: export names the images it leaves out; an image relabelled in the user's labels.csv is a new row,
    and its old row (set aside: ``source removed``) is no image lost — not counted."""
    import pandas as pd

    from dsbuild.exporters import left_out
    from dsbuild.sources import SOURCE_REMOVED

    rows = pd.DataFrame({"status": ["ok", "duplicate", "duplicate", "rejected", "rejected", "failed", "rejected"],
                         "reason": [None, "exact duplicate", "near duplicate", "removed in review", "truncated",
                                    "download failed", SOURCE_REMOVED]})
    assert left_out(rows) == (("duplicates (copies of exported images)", 2), ("removed in review", 1),
                              ("rejected or failed", 2))
    assert left_out(rows.iloc[[0, 6]]) == ()
