"""The manifest boundary: bad manifests (one table of input → message), defaults, paths, the shipped file.

Every bad manifest must fail with exit code 2, the dotted key path and the bad
value, before anything is written: ``dsbuild build`` on it creates no catalog.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dsbuild.cli import main
from dsbuild.errors import DsbuildError, ManifestError
from dsbuild.manifest import DEFAULT_CATALOG, ClassSpec, label_problem, load_manifest, parse_manifest

REPO = Path(__file__).resolve().parents[1]
TWO = '[datasets.d.classes]\na = "qa"\nb = "qb"\n'
KNOWN_ENGINES = "bing, icrawler:baidu, icrawler:bing, icrawler:flickr, icrawler:google, icrawler:greedy"


def write(folder: Path, text: str | bytes, name: str = "datasets.toml") -> Path:
    path = folder / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


# (case id, manifest text, problem lines expected in the message). Each line is "key path: message".
BAD = [
    # unknown keys, with their dotted key path and a did-you-mean
    ("unknown-top", 'catalogue = "x.duckdb"\n' + TWO, ["catalogue: unknown key (did you mean 'catalog'?)"]),
    ("unknown-dataset", "[datasets.d]\nper_querry = 5\n" + TWO,
     ["datasets.d.per_querry: unknown key (did you mean 'per_query'?)"]),
    ("unknown-class", '[datasets.d.classes]\na = { queries = "x", folder = "f" }\nb = "qb"\n',
     ["datasets.d.classes.a.folder: unknown key (did you mean 'folders'?)"]),
    ("unknown-nested", "[datasets.d.verify]\nmin_size = 3\n" + TWO,
     ["datasets.d.verify.min_size: unknown key (did you mean 'min_side'?)"]),
    ("unknown-defaults", '[defaults]\nengnie = "bing"\n' + TWO, ["defaults.engnie: unknown key (did you mean 'engine'?)"]),
    ("unknown-defaults-nested", "[defaults.split]\ntrian = 0.5\n" + TWO,
     ["defaults.split.trian: unknown key (did you mean 'train'?)"]),
    ("unknown-no-hint", "[datasets.d]\nzzzzzz = 1\n" + TWO, ["datasets.d.zzzzzz: unknown key"]),
    # wrong types: the key path and the bad value
    ("per-query-str", '[datasets.d]\nper_query = "ten"\n' + TWO, ["datasets.d.per_query: must be an integer, not 'ten'"]),
    ("per-query-bool", "[datasets.d]\nper_query = true\n" + TWO, ["datasets.d.per_query: must be an integer, not True"]),
    ("per-query-zero", "[datasets.d]\nper_query = 0\n" + TWO, ["datasets.d.per_query: must be at least 1, not 0"]),
    ("split-train-str", '[datasets.d.split]\ntrain = "x"\n' + TWO, ["datasets.d.split.train: must be a number, not 'x'"]),
    ("split-train-nan", "[datasets.d.split]\ntrain = nan\n" + TWO, ["datasets.d.split.train: must be a number, not nan"]),
    ("formats-int", "[datasets.d.verify]\nformats = 5\n" + TWO,
     ["datasets.d.verify.formats: must be a string or a list of strings, not an integer"]),
    ("formats-ints", "[datasets.d.verify]\nformats = [1, 2]\n" + TWO,
     ["datasets.d.verify.formats: must be a string or a list of strings, not a list"]),
    ("formats-eps", '[datasets.d.verify]\nformats = ["JPEG", "EPS"]\n' + TWO,
     ["datasets.d.verify.formats: 'EPS' is not allowed — allowed formats: JPEG, PNG, WEBP, GIF, BMP, TIFF"]),
    ("adult-filter-str", '[datasets.d]\nadult_filter = "yes"\n' + TWO, ["datasets.d.adult_filter: must be a boolean, not 'yes'"]),
    ("engine-int", "[datasets.d]\nengine = 3\n" + TWO, ["datasets.d.engine: must be a string, not 3"]),
    ("defaults-type", '[defaults]\nper_query = "many"\n' + TWO, ["defaults.per_query: must be an integer, not 'many'"]),
    ("section-not-table", "[datasets.d]\nverify = 5\n" + TWO, ["datasets.d.verify: must be a table, not an integer"]),
    ("min-side-zero", "[datasets.d.verify]\nmin_side = 0\n" + TWO, ["datasets.d.verify.min_side: must be at least 1, not 0"]),
    ("filters-value", "[datasets.d]\nfilters = { size = 5 }\n" + TWO, ["datasets.d.filters.size: must be a string, not 5"]),
    ("hash-kind", '[datasets.d.dedup]\nhash = "phsh"\n' + TWO,
     ["datasets.d.dedup.hash: unknown hash 'phsh' (did you mean 'phash'?) — known: phash, dhash, whash, ahash"]),
    ("quality-flag", '[datasets.d.quality]\nreject = ["blury"]\n' + TWO,
     ["datasets.d.quality.reject: unknown flag 'blury' (did you mean 'blurry'?)"]),
    ("catalog-int", "catalog = 5\n" + TWO, ["catalog: must be a path string, not 5"]),
    ("catalog-empty", 'catalog = ""\n' + TWO, ["catalog: must be a path string, not ''"]),
    ("defaults-not-table", 'defaults = "x"\n' + TWO, ["defaults: must be a table, not a string"]),
    # classes: none, one, empty, wrong shape
    ("no-datasets", 'catalog = "x.duckdb"\n',
     ["datasets: no dataset defined — add a [datasets.NAME] table with [datasets.NAME.classes]"]),
    ("datasets-str", 'datasets = "x"\n', ["datasets: must be a table of datasets, not a string"]),
    ("no-classes", '[datasets.d]\nengine = "bing"\n',
     ["datasets.d.classes: missing — a dataset needs at least two classes (or an imagefolder, or a labels_csv)"]),
    ("one-class", '[datasets.d.classes]\na = "qa"\n', ["datasets.d.classes: needs at least two classes, found 1"]),
    ("zero-classes", "[datasets.d.classes]\n", ["datasets.d.classes: needs at least two classes, found 0"]),
    ("classes-str", '[datasets.d]\nclasses = "a, b"\n', ["datasets.d.classes: must be a table, not a string"]),
    ("empty-class-str", '[datasets.d.classes]\na = ""\nb = "qb"\n',
     ["datasets.d.classes.a: contains an empty string", "datasets.d.classes.a: has no query"]),
    ("empty-class-list", '[datasets.d.classes]\na = []\nb = "qb"\n', ["datasets.d.classes.a: has no query"]),
    ("empty-class-table", '[datasets.d.classes]\na = {}\nb = "qb"\n',
     ["datasets.d.classes.a: has no source — give queries, urls or folders"]),
    ("class-int", '[datasets.d.classes]\na = 5\nb = "qb"\n',
     ["datasets.d.classes.a: must be a query string, a list of queries or a table, not an integer"]),
    ("class-folders-int", '[datasets.d.classes]\na = { folders = 3 }\nb = "qb"\n',
     ["datasets.d.classes.a.folders: must be a string or a list of strings, not an integer",
      "datasets.d.classes.a: has no source — give queries, urls or folders"]),
    ("class-endpoint-int", '[datasets.d.classes]\na = { queries = "x", endpoint = 1 }\nb = "qb"\n',
     ["datasets.d.classes.a.endpoint: must be a string, not an integer"]),
    # split fractions
    ("split-sum-above-1", "[datasets.d.split]\ntrain = 0.9\nvalid = 0.3\n" + TWO,
     ["datasets.d.split: fractions must add up to 1 (train 0.9 + valid 0.3 + test 0.0 = 1.2) — set train = 0.7 "
      "(what valid 0.3 and test 0.0 leave), or leave train out of [split]: an omitted train takes the rest"]),
    ("split-sum-below-1", "[datasets.d.split]\ntrain = 0.5\nvalid = 0.2\ntest = 0.1\n" + TWO,
     ["datasets.d.split: fractions must add up to 1 (train 0.5 + valid 0.2 + test 0.1 = 0.8) — set train = 0.7 "
      "(what valid 0.2 and test 0.1 leave), or leave train out of [split]: an omitted train takes the rest"]),
    ("split-no-share-for-train", "[datasets.d.split]\nvalid = 0.6\ntest = 0.5\n" + TWO,
     ["datasets.d.split: fractions must add up to 1 (train 0.8 + valid 0.6 + test 0.5 = 1.9) — valid 0.6 + test "
      "0.5 leave train no share: lower them to add up to less than 1"]),
    ("split-negative", "[datasets.d.split]\ntrain = 1.2\nvalid = -0.2\n" + TWO,
     ["datasets.d.split.train: must be between 0 and 1, not 1.2", "datasets.d.split.valid: must be between 0 and 1, not -0.2"]),
    ("split-train-zero", "[datasets.d.split]\ntrain = 0.0\nvalid = 1.0\n" + TWO, ["datasets.d.split.train: must be greater than 0"]),
    # labels: clashing case, unsafe folder names
    ("case-clash", '[datasets.d.classes]\nCat = "qa"\ncat = "qb"\n',
     ["datasets.d.classes.cat: class 'cat' and 'Cat' are one name to a case-insensitive file system (macOS, "
      "Windows): they differ only in case — keep one of them"]),
    ("label-dotdot-x", '[datasets.d.classes]\n"../x" = "qa"\nb = "qb"\n',
     ["datasets.d.classes.\"../x\": class name '../x' starts with '.'"]),
    ("label-dotdot", '[datasets.d.classes]\n".." = "qa"\nb = "qb"\n',
     ["datasets.d.classes.\"..\": class name '..' starts with '.'"]),
    ("label-abs", '[datasets.d.classes]\n"/abs" = "qa"\nb = "qb"\n',
     ["datasets.d.classes.\"/abs\": class name '/abs' contains characters unsafe in folder names ('/')"]),
    ("label-slash", '[datasets.d.classes]\n"a/b" = "qa"\nb = "qb"\n',
     ["datasets.d.classes.\"a/b\": class name 'a/b' contains characters unsafe in folder names ('/')"]),
    ("label-backslash", '[datasets.d.classes]\n"a\\\\b" = "qa"\nb = "qb"\n',
     ['datasets.d.classes."a\\b": class name \'a\\\\b\' contains characters unsafe in folder names (\'\\\\\')']),
    ("label-CON", '[datasets.d.classes]\nCON = "qa"\nb = "qb"\n',
     ["datasets.d.classes.CON: class name 'CON' is a reserved device name on Windows"]),
    ("label-nul-ext", '[datasets.d.classes]\n"nul.txt" = "qa"\nb = "qb"\n',
     ["datasets.d.classes.\"nul.txt\": class name 'nul.txt' is a reserved device name on Windows"]),
    ("label-empty", '[datasets.d.classes]\n"" = "qa"\nb = "qb"\n', ["datasets.d.classes.\"\": class name '' is empty"]),
    ("label-hidden", '[datasets.d.classes]\n".hidden" = "qa"\nb = "qb"\n',
     ["datasets.d.classes.\".hidden\": class name '.hidden' starts with '.'"]),
    ("label-space", '[datasets.d.classes]\n" a" = "qa"\nb = "qb"\n',
     ["datasets.d.classes.\" a\": class name ' a' starts or ends with a space or ends with '.'"]),
    # dataset names
    ("dataset-name-space", '[datasets."bad name!".classes]\na = "x"\nb = "y"\n',
     ["datasets.\"bad name!\": dataset names use letters, digits, '_', '-' and '.', start with a letter or digit"]),
    ("dataset-name-underscore", '[datasets._x.classes]\na = "x"\nb = "y"\n',
     ["datasets._x: dataset names use letters, digits, '_', '-' and '.', start with a letter or digit, at most 64"]),
    ("dataset-name-dots", '[datasets."..".classes]\na = "x"\nb = "y"\n', ['datasets."..": dataset names use letters']),
    ("dataset-not-table", "[datasets]\nd = 5\n", ["datasets.d: must be a table, not an integer"]),
    # several problems are reported together, in file order
    ("unknown-engine", '[datasets.d]\nengine = "gogle"\n' + TWO,
     [f"datasets.d.engine: unknown engine 'gogle' — known engines: {KNOWN_ENGINES}"]),
    ("unknown-engine-hint", '[datasets.d]\nengine = "icrawler:gogle"\n' + TWO,
     [f"datasets.d.engine: unknown engine 'icrawler:gogle' (did you mean 'icrawler:google'?) — known engines: {KNOWN_ENGINES}"]),
    ("defaults-engine", '[defaults]\nengine = "duckduckgo"\n' + TWO,
     [f"datasets.d.engine: unknown engine 'duckduckgo' — known engines: {KNOWN_ENGINES}"]),
    ("two-problems", "[datasets.d]\nper_querry = 5\nengine = 3\n" + TWO,
     ["datasets.d.per_querry: unknown key (did you mean 'per_query'?)", "datasets.d.engine: must be a string, not 3"]),
    # [model] and [fetch] are parsed into their stages' settings at load: a typo fails before any build or training
    ("model-unknown-key", TWO + "[datasets.d.model]\nepohcs = 3\n",
     ["datasets.d.model.epohcs: unknown key (did you mean 'epochs'?)"]),
    ("model-bad-values", TWO + "[datasets.d.model]\nepochs = -1\nsize = 8\n",
     ["datasets.d.model.size: must be an integer 16..2048, got 8", "datasets.d.model.epochs: must be an integer 0..1000, got -1"]),
    ("model-bad-type", '[defaults.model]\nepochs = "four"\n' + TWO,
     ["defaults.model.epochs: must be an integer, not 'four'"]),
    ("model-not-a-table", "[datasets.d]\nmodel = 3\n" + TWO, ["datasets.d.model: must be a table, not an integer"]),
    ("fetch-bad-value", TWO + "[datasets.d.fetch]\nconcurrency = 0\nallowed_networks = [\"intranet\"]\n",
     ["datasets.d.fetch.concurrency: must be an integer ≥ 1, got 0",
      "datasets.d.fetch.allowed_networks: 'intranet' is not an address or CIDR network"]),
    ("fetch-unknown-key", '[defaults.fetch]\nconcurency = 4\n' + TWO,
     ["defaults.fetch.concurency: unknown key (did you mean 'concurrency'?)"]),
    ("fetch-private-hosts", TWO + "[datasets.d.fetch]\nallow_private_hosts = true\n",
     ["datasets.d.fetch.allow_private_hosts: set it on the dataset (datasets.d.allow_private_hosts), not in [fetch]"]),
    # [executor], top level and per dataset
    ("executor-bad-values", '[executor]\nbackend = "rey"\nbatch_size = 0\n' + TWO,
     ["executor.backend: unknown backend 'rey' (did you mean 'ray'?) — known: local, ray",
      "executor.batch_size: must be an integer from 1 to 100000, not 0"]),
    ("executor-unknown-key", "[executor]\nbach_size = 8\n" + TWO,
     ["executor.bach_size: unknown key (did you mean 'batch_size'?)"]),
    ("executor-not-a-table", 'executor = "ray"\n' + TWO, ["executor: must be a table, not a string"]),
    ("executor-dataset-address", TWO + '[datasets.d.executor]\nbackend = "ray"\naddress = "head node"\n',
     ["datasets.d.executor.address: must be \"auto\", \"host:port\" or \"ray://host:port\", not 'head node'"]),
    ("executor-batch-type", TWO + '[datasets.d.executor]\nbatch_size = "64"\n',
     ["datasets.d.executor.batch_size: must be an integer from 1 to 100000, not '64'"]),
    ("executor-in-defaults", '[defaults.executor]\nbackend = "ray"\n' + TWO, ["defaults.executor: unknown key"]),
]


@pytest.mark.parametrize("text, lines", [pytest.param(t, ls, id=i) for i, t, ls in BAD])
def test_bad_manifest_message(tmp_path: Path, text: str, lines: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert info.value.exit_code == 2
    noun = "problem" if len(lines) == 1 else "problems"
    assert message.startswith(f"datasets.toml: {len(lines)} {noun}:\n"), message
    problems = [line.strip() for line in message.splitlines()[1:]]
    assert len(problems) == len(lines), message
    for got, want in zip(problems, lines):
        assert got.startswith(want), f"{got!r} does not start with {want!r}"


@pytest.mark.parametrize("text, lines", [pytest.param(t, ls, id=i) for i, t, ls in BAD])
def test_bad_manifest_writes_nothing(tmp_path: Path, capsys, text: str, lines: list[str]) -> None:
    """`dsbuild build` on a bad manifest: exit 2, one `Error:` on stderr, no traceback, no catalog."""
    path = write(tmp_path, text)
    rc = main(["build", "-q", "-m", str(path)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.startswith("Error: datasets.toml: ")
    assert err.count("Error:") == 1
    assert lines[0] in err
    assert "Traceback" not in err + out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets.toml"]


# Problems only found when building (need the engine registry or the disk): still before anything is written.
BUILD_TIME = [
    ("missing-folder", '[datasets.d.classes]\na = { folders = "nope" }\nb = { folders = "nope2" }\n',
     "datasets.d.classes.a.folders: {root}/nope does not exist"),
    ("missing-url-list", '[datasets.d.classes]\na = { urls = "a.txt" }\nb = "qb"\n',
     "datasets.d.classes.a.urls: {root}/a.txt does not exist"),
]


@pytest.mark.parametrize("text, fragment", [pytest.param(t, f, id=i) for i, t, f in BUILD_TIME])
def test_build_preflight_writes_nothing(tmp_path: Path, capsys, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    rc = main(["build", "-q", "-m", str(path)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.startswith("Error: cannot build:\n")
    assert fragment.format(root=tmp_path.resolve()) in err
    assert "Traceback" not in err + out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets.toml"]


def test_a_mistyped_class_folder_names_the_folder_beside_it(tmp_path: Path, capsys) -> None:
    """Fresh-user trial 8: `folders = "data/zer0"` said only "does not exist" with data/zero right there."""
    (tmp_path / "data" / "zero").mkdir(parents=True)
    (tmp_path / "data" / "one").mkdir()
    path = write(tmp_path, '[datasets.d.classes]\nzero = { folders = "data/zer0" }\none = { folders = "data/one" }\n')
    assert main(["build", "-q", "-m", str(path)]) == 2
    err = capsys.readouterr().err
    assert (f"datasets.d.classes.zero.folders: {tmp_path.resolve() / 'data' / 'zer0'} does not exist (did you mean "
            "'zero'?)") in err, err


def test_a_mistyped_imagefolder_is_shown_resolved_with_the_folder_beside_it(tmp_path: Path, capsys) -> None:
    """Fresh-user trial 10: `imagefolder = "../pet"` (the folder is ../pets) said only `…/proj/../pet is not a
    folder`: the path as the manifest made it, no did-you-mean (class folders had one), "not a folder" for one
    that does not exist. A file where a folder belongs is still "not a folder"."""
    (tmp_path / "pets" / "cat").mkdir(parents=True)
    (tmp_path / "pets" / "dog").mkdir()
    (tmp_path / "notes.txt").write_text("not a folder\n")
    proj = tmp_path.resolve() / "proj"
    proj.mkdir()
    path = write(proj, '[datasets.a]\nimagefolder = "../pet"\n\n[datasets.b]\nimagefolder = "../notes.txt"\n')
    assert main(["build", "-q", "-m", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (f"datasets.a.imagefolder: {proj}/../pet (= {tmp_path.resolve() / 'pet'}) does not exist (did you mean "
            "'pets'?)") in err, err
    assert f"datasets.b.imagefolder: {proj}/../notes.txt (= {tmp_path.resolve() / 'notes.txt'}) is not a folder" in err


@pytest.mark.parametrize(
    "text, line, column",
    [
        pytest.param("[datasets.d]\nper_query = \n" + TWO, 2, 13, id="missing-value"),
        pytest.param('[datasets.d.classes]\na = "qa"\nb = "qb\n', 3, 8, id="unclosed-string"),
        pytest.param("[datasets.d\n" + TWO, 1, 12, id="unclosed-table"),
        pytest.param(TWO + 'a = "again"\n', 4, None, id="duplicate-key"),
    ],
)
def test_bad_toml_names_file_and_line(tmp_path: Path, capsys, text: str, line: int, column: int | None) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert message.startswith("datasets.toml: invalid TOML: ")
    assert f"line {line}" in message
    if column is not None:
        assert f"(at line {line}, column {column})" in message
    assert message.endswith("— fix the syntax and run again")
    rc = main(["status", "-m", str(path)])
    out, err = capsys.readouterr()
    assert rc == 2 and err == f"Error: {message}\n" and out == ""


def test_missing_manifest(tmp_path: Path, capsys, monkeypatch) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(DsbuildError) as info:
        load_manifest(missing)
    assert info.value.exit_code == 2
    assert str(info.value) == f"no manifest at {missing} — run `dsbuild init` to write a starter one, or pass -m PATH"
    monkeypatch.chdir(tmp_path)  # the default is ./datasets.toml
    rc = main(["build"])
    out, err = capsys.readouterr()
    assert rc == 2
    # where it looked (fresh-user trial 8: run from another folder, the message did not say)
    assert err == (f"Error: no manifest at datasets.toml in {tmp_path} — run `dsbuild init` to write a starter one, "
                   "or pass -m PATH\n")
    assert list(tmp_path.iterdir()) == []


def test_manifest_is_a_folder_or_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(DsbuildError, match="is a folder, not a manifest file — pass -m PATH/datasets.toml") as info:
        load_manifest(tmp_path)
    assert info.value.exit_code == 2
    path = write(tmp_path, b"[datasets.d]\ndescription = \"caf\xe9\"\n" + TWO.encode())
    with pytest.raises(ManifestError, match=r"^datasets.toml: not UTF-8 text — save the manifest as UTF-8$"):
        load_manifest(path)


@pytest.mark.parametrize(
    "label, problem",
    [
        ("cat", None),
        ("sun glasses", None),
        ("VR", None),
        ("great_wall", None),
        ("ünïcode", None),
        ("v1.2", None),
        ("../x", "starts with '.'"),
        ("..", "starts with '.'"),
        (".hidden", "starts with '.'"),
        ("/abs", "contains characters unsafe in folder names ('/')"),
        ("a/b", "contains characters unsafe in folder names ('/')"),
        ("a\\b", "contains characters unsafe in folder names ('\\\\')"),
        ("what?", "contains characters unsafe in folder names ('?')"),
        ("tab\there", "contains characters unsafe in folder names ('\\t')"),
        ("CON", "is a reserved device name on Windows"),
        ("com1", "is a reserved device name on Windows"),
        ("LPT9.txt", "is a reserved device name on Windows"),
        ("", "is empty"),
        ("   ", "is empty"),
        (" cat", "starts or ends with a space or ends with '.'"),
        ("cat.", "starts or ends with a space or ends with '.'"),
        ("x" * 101, "is longer than 100 characters"),
        ("é" * 100, None),  # 200 bytes
        ("猫" * 85, None),  # 255 bytes
        ("猫" * 86, "is 258 bytes in UTF-8 — a folder name may have at most 255 bytes; shorten it"),
        ("__MACOSX", "is macOS's zip-metadata folder name, which an imagefolder import skips — rename it"),
        ("__macosx", None),
        ("CONIN$", "is a reserved device name on Windows"),
        ("conout$.log", "is a reserved device name on Windows"),
        ("COM0", "is a reserved device name on Windows"),
        ("lpt³", "is a reserved device name on Windows"),
        ("COM10", None),
        ("a\x85b", "contains invisible or control characters ('\\x85') — it would print like another name; remove "
                   "them"),
        ("\ufeffcat", "contains invisible or control characters ('\\ufeff') — it would print like another name; "
                      "remove them"),
        ("قهوه\u200cخانه", None),  # ZWNJ: part of the word in Persian
        ("caf\udce9", "is not valid UTF-8 (a name written in another encoding, e.g. Latin-1 from a zip made on "
                       "Windows) — rename it in UTF-8 (e.g. convmv -f latin1 -t utf8 --notest NAME)"),
    ],
)
def test_label_problem(label: str, problem: str | None) -> None:
    assert label_problem(label) == problem


# --------------------------------------------------------------------------- good manifests


@pytest.mark.parametrize("split, shares", [
    ("valid = 0.3", (0.7, 0.3, 0.0)),                 # trial 5: "fractions must add up to 1 (… = 1.1)"
    ("valid = 0.1", (0.9, 0.1, 0.0)),
    ("test = 0.1", (0.7, 0.2, 0.1)),
    ("valid = 0.15\ntest = 0.15", (0.7, 0.15, 0.15)),
    ("train = 0.7\nvalid = 0.2", (0.7, 0.2, 0.1)),   # an omitted test still takes the rest when train is given
    ("seed = 3", (0.8, 0.2, 0.0)),
])
def test_an_omitted_share_takes_the_rest(tmp_path: Path, split: str, shares: tuple[float, float, float]) -> None:
    ds = load_manifest(write(tmp_path, f"[datasets.d.split]\n{split}\n" + TWO)).dataset("d")
    assert (ds.split.train, ds.split.valid, ds.split.test) == pytest.approx(shares)


def test_defaults_apply_and_datasets_override(tmp_path: Path) -> None:
    path = write(tmp_path, """
[defaults]
engine = "icrawler:bing"
per_query = 7
adult_filter = false
filters = { size = "large", type = "photo" }
[defaults.verify]
min_side = 64
[defaults.split]
train = 0.7
valid = 0.3
[defaults.model]
arch = "resnet18"
epochs = 2

[datasets.plain]
[datasets.plain.classes]
a = "qa"
b = "qb"

[datasets.custom]
engine = "bing"
per_query = 3
filters = { type = "clipart" }
[datasets.custom.verify]
max_aspect_ratio = 3
[datasets.custom.split]
train = 0.6
valid = 0.2
[datasets.custom.model]
epochs = 9
[datasets.custom.classes]
a = "qa"
b = "qb"
""")
    m = load_manifest(path)
    assert list(m.datasets) == ["plain", "custom"]
    plain, custom = m.dataset("plain"), m.dataset("custom")
    assert (plain.engine, plain.per_query, plain.adult_filter) == ("icrawler:bing", 7, False)
    assert dict(plain.filters) == {"size": "large", "type": "photo"}
    assert (plain.verify.min_side, plain.verify.max_aspect_ratio) == (64, 6.0)
    assert (plain.split.train, plain.split.valid, plain.split.test) == (0.7, 0.3, 0.0)
    assert dict(plain.model) == {"arch": "resnet18", "epochs": 2}
    # dataset values win, key by key; what the dataset does not set still comes from [defaults]
    assert (custom.engine, custom.per_query, custom.adult_filter) == ("bing", 3, False)
    assert dict(custom.filters) == {"size": "large", "type": "clipart"}
    assert (custom.verify.min_side, custom.verify.max_aspect_ratio) == (64, 3.0)
    assert dict(custom.model) == {"arch": "resnet18", "epochs": 9}
    # an omitted test fraction takes the rest
    assert (custom.split.train, custom.split.valid) == (0.6, 0.2)
    assert custom.split.test == pytest.approx(0.2)


def test_builtin_defaults(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path, TWO))
    d = m.dataset("d")
    assert (d.engine, d.per_query, d.adult_filter, d.allow_private_hosts, d.endpoint) == ("bing", 100, True, False, None)
    assert (d.verify.min_side, d.verify.max_aspect_ratio, d.verify.max_pixels) == (32, 6.0, 89_478_485)
    assert d.verify.formats == ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    assert (d.dedup.hash, d.dedup.hash_size, d.dedup.threshold, d.dedup.near) == ("phash", 8, 10, True)
    from dsbuild.dedup.search import DEFAULT_THRESHOLD

    assert d.dedup.threshold == DEFAULT_THRESHOLD  # the measured default (bench/dup_quality.py)
    assert (d.split.train, d.split.valid, d.split.test, d.split.seed) == (0.8, 0.2, 0.0, 42)
    assert d.quality.reject == ()


def test_class_shapes(tmp_path: Path) -> None:
    path = write(tmp_path, """
[datasets.eyewear]
[datasets.eyewear.classes]
glasses = "  portrait glasses "
sunglasses = ["portrait sunglasses", "person wearing sunglasses"]
VR = { queries = ["VR headset"], urls = "lists/vr.txt", folders = ["photos/vr", "more/vr"], endpoint = "http://127.0.0.1:1/" }
mine = { folders = "photos/mine" }
""")
    ds = load_manifest(path).dataset("eyewear")
    root = tmp_path.resolve()
    assert ds.labels == ["glasses", "sunglasses", "VR", "mine"]
    assert ds.classes[0] == ClassSpec(name="glasses", queries=("portrait glasses",))
    assert ds.classes[1] == ClassSpec(name="sunglasses", queries=("portrait sunglasses", "person wearing sunglasses"))
    assert ds.classes[2] == ClassSpec(
        name="VR", queries=("VR headset",), urls=(root / "lists/vr.txt",),
        folders=(root / "photos/vr", root / "more/vr"), endpoint="http://127.0.0.1:1/",
    )
    assert ds.classes[3] == ClassSpec(name="mine", folders=(root / "photos/mine",))


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path: Path, monkeypatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(project, """
catalog = "db/cat.duckdb"
[datasets.d.classes]
a = { folders = "photos/a", urls = "../lists/a.txt" }
b = { folders = "/abs/b" }
""")
    monkeypatch.chdir(elsewhere)
    m = load_manifest("../project/datasets.toml")
    root = project.resolve()
    assert m.path == root / "datasets.toml"
    assert m.root == root
    assert m.catalog == root / "db/cat.duckdb"
    assert m.store == root / "db/store"
    a, b = m.dataset("d").classes
    assert a.folders == (root / "photos/a",)
    assert a.urls == (root / "../lists/a.txt",)
    assert a.urls[0].resolve() == tmp_path.resolve() / "lists/a.txt"
    assert b.folders == (Path("/abs/b"),)
    assert list(elsewhere.iterdir()) == []  # loading writes nothing


def test_default_catalog_and_store(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path, TWO)
    monkeypatch.chdir("/")
    m = load_manifest(tmp_path / "datasets.toml")
    assert m.catalog == tmp_path.resolve() / DEFAULT_CATALOG
    assert m.store == tmp_path.resolve() / "catalog/store"
    m2 = load_manifest(write(tmp_path, f'catalog = "{tmp_path}/abs/x.duckdb"\nstore = "images"\n' + TWO, "other.toml"))
    assert m2.catalog == tmp_path.resolve() / "abs/x.duckdb"
    assert m2.store == tmp_path.resolve() / "images"


def test_unknown_dataset_names_the_known_ones(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path, TWO.replace("datasets.d.", "datasets.pets.")))
    with pytest.raises(DsbuildError) as info:
        m.dataset("pest")
    assert str(info.value) == "no dataset 'pest' in datasets.toml (did you mean 'pets'?) — known datasets: pets"
    assert [d.name for d in m.select([])] == ["pets"]


def test_parse_manifest_takes_text(tmp_path: Path) -> None:
    m = parse_manifest(TWO, tmp_path / "in-memory.toml")
    assert m.path == tmp_path.resolve() / "in-memory.toml"
    assert m.dataset("d").labels == ["a", "b"]
    assert not (tmp_path / "catalog").exists()


def test_shipped_manifest_parses() -> None:
    m = load_manifest(REPO / "datasets.toml")
    assert {"demo", "eyewear", "wonders", "sharks-vs-dolphins", "landmarks"} <= set(m.datasets)
    assert m.catalog == REPO / "catalog" / "dsbuild.duckdb"
    demo = m.dataset("demo")
    assert demo.labels == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert all(c.folders == (REPO / "demo_data/digits" / c.name,) and not c.queries for c in demo.classes)
    # the demo needs no tuning: verify and dedup at their defaults (it set min_side = 16 and threshold = 2)
    from dsbuild.dedup.settings import DedupSettings
    from dsbuild.verify.settings import VerifySettings

    assert (demo.verify, demo.dedup) == (VerifySettings(), DedupSettings())
    assert demo.model["arch"] == "efficientnet_lite0"
    eyewear = m.dataset("eyewear")
    assert eyewear.labels == ["glasses", "sunglasses", "VR", "none"]
    assert eyewear.engine == "bing" and eyewear.per_query == 1000  # more than Bing returns
    assert all(c.queries and not c.folders for c in eyewear.classes)
    assert len(m.dataset("wonders").labels) == 7
    assert m.dataset("wonders").model["arch"] == "resnet34"
    sharks = m.dataset("sharks-vs-dolphins")
    assert sharks.labels == ["shark", "dolphin"]
    assert len(sharks.classes[0].queries) == 2
    assert sharks.engine == "icrawler:google" and dict(sharks.filters) == {"license": "noncommercial"}
    landmarks = m.dataset("landmarks")
    assert landmarks.imagefolder == REPO / "landmarks" and landmarks.classes == ()
    assert (landmarks.split.carve.source, landmarks.split.carve.valid) == ("train", 0.2)


@pytest.mark.parametrize("text, warnings", [
    # the default recipe (a head on frozen features, frozen out-of-fold heads) has no epochs
    ("[datasets.d.model]\nepochs = 4\n" + TWO,
     ["datasets.d.model: epochs = 4 is used only with finetune = true — datasets.d.model trains a logistic head on "
      "frozen features, which has no epochs; set finetune = true to fine-tune the whole network, or remove epochs"]),
    ("[defaults.model]\nepochs = 2\n" + TWO,
     ["defaults.model: epochs = 2 is used only with finetune = true — datasets.d.model trains a logistic head on "
      "frozen features, which has no epochs; set finetune = true to fine-tune the whole network, or remove epochs"]),
    ("[datasets.d.model]\nepochs = 4\nfinetune = true\n" + TWO, []),
    ("[defaults.model]\nepochs = 2\n[datasets.d.model]\nfinetune = true\n" + TWO, []),
    ("[datasets.d.model]\nepochs = 4\npretrained = false\n" + TWO, []),  # fine-tunes (finetune follows pretrained)
    ("[datasets.d.model]\nepochs = 4\noof_method = \"crossfit\"\n" + TWO, []),  # mislabels fine-tunes with epochs
    ("[datasets.d.model]\nepochs = 4\noof_method = \"kfold\"\noof_epochs = 1\n" + TWO,
     ["datasets.d.model: epochs = 4 is used only with finetune = true — datasets.d.model trains a logistic head on "
      "frozen features, which has no epochs; set finetune = true to fine-tune the whole network, or remove epochs"]),
    ("[datasets.d.model]\nfreeze_epochs = 0\n" + TWO, []),
    (TWO, []),
], ids=["dataset", "defaults", "finetune", "defaults-finetune", "scratch", "crossfit", "oof-epochs", "freeze", "none"])
def test_settings_nothing_uses_are_warnings(tmp_path: Path, text: str, warnings: list[str]) -> None:
    assert list(load_manifest(write(tmp_path, text)).dataset("d").warnings) == warnings


def test_build_warns_once_about_epochs_without_finetune(tmp_path: Path, capsys) -> None:
    """`epochs` in [model] without `finetune = true` was silently unused: the build says so on stderr, once."""
    folder = tmp_path / "photos"
    from PIL import Image

    for label, value in (("a", 40), ("b", 200)):
        (folder / label).mkdir(parents=True)
        Image.new("RGB", (64, 64), (value, 255 - value, value // 2)).save(folder / label / "x.png")
    path = write(tmp_path, '[defaults.model]\nepochs = 3\n'
                           '[datasets.d.classes]\na = { folders = "photos/a" }\nb = { folders = "photos/b" }\n'
                           '[datasets.e.classes]\na = { folders = "photos/a" }\nb = { folders = "photos/b" }\n')
    assert main(["-m", str(path), "-q", "build", "d"]) == 0
    err = capsys.readouterr().err
    assert err == ("Warning: defaults.model: epochs = 3 is used only with finetune = true — datasets.d.model trains a "
                   "logistic head on frozen features, which has no epochs; set finetune = true to fine-tune the whole "
                   "network, or remove epochs\n")


def test_shipped_manifest_sets_nothing_unused() -> None:
    assert {name: ds.warnings for name, ds in load_manifest(REPO / "datasets.toml").datasets.items() if ds.warnings} == {}


def test_executor_top_level_and_per_dataset(tmp_path: Path) -> None:
    """``[executor]`` at the top applies to every dataset; a dataset's own table overrides it key by key."""
    from dsbuild.executor_settings import ExecutorSettings

    text = ('[executor]\nbackend = "ray"\naddress = "auto"\nbatch_size = 32\n'
            '[datasets.a.classes]\nx = "qx"\ny = "qy"\n'
            '[datasets.b.executor]\nbatch_size = 8\n[datasets.b.classes]\nx = "qx"\ny = "qy"\n'
            '[datasets.c.executor]\nbackend = "local"\n[datasets.c.classes]\nx = "qx"\ny = "qy"\n')
    m = load_manifest(write(tmp_path, text))
    assert m.executor == ExecutorSettings(backend="ray", address="auto", batch_size=32)
    assert m.datasets["a"].executor == m.executor
    assert m.datasets["b"].executor == ExecutorSettings(backend="ray", address="auto", batch_size=8)
    assert m.datasets["c"].executor.backend == "local"
    (tmp_path / "plain").mkdir()
    plain = load_manifest(write(tmp_path / "plain", TWO))
    assert plain.executor == plain.datasets["d"].executor == ExecutorSettings()  # default: the local backend


@pytest.mark.parametrize("args, message", [
    (["--ray-address", "head node"], "Error: --ray-address must be \"auto\", \"host:port\" or \"ray://host:port\", not 'head node'\n"),
    (["--executor", "local", "--ray-address", "auto"], "Error: --ray-address needs --executor ray (or no --executor)\n"),
])
def test_build_executor_flags_are_checked_before_any_work(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    path = write(tmp_path, 'catalog = "cat/x.duckdb"\n' + TWO)
    code = main(["-m", str(path), "build", "-q", *args])
    assert code == 2
    assert capsys.readouterr().err == message
    assert not (tmp_path / "cat").exists()
