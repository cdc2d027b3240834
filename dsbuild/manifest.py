"""The manifest: ``datasets.toml`` parsed into frozen dataclasses.

Every section is parsed into the frozen settings of the stage that owns it,
when the manifest loads: ``[verify]`` and ``[quality]`` →
:mod:`dsbuild.verify.settings`, ``[dedup]`` → :class:`dsbuild.dedup.settings.DedupSettings`,
``[split]`` → :class:`dsbuild.split.SplitSettings`, ``[fetch]`` →
:class:`dsbuild.fetch_settings.FetchSettings`, ``[model]`` →
:class:`dsbuild.model.settings.ModelSettings`. Every problem is reported with
the manifest file, the dotted key path and the bad value, e.g.
``datasets.eyewear.per_querry: unknown key (did you mean 'per_query'?)`` or
``datasets.eyewear.model.epohcs: unknown key (did you mean 'epochs'?)``. All
problems are collected and raised together as one
:class:`~dsbuild.errors.ManifestError`, before anything is downloaded, written or trained.

Shape (see README for every key and its default)::

    catalog = "catalog/dsbuild.duckdb"      # optional, relative to this file
    [defaults]                              # apply to every dataset
    engine = "bing"
    [datasets.NAME]
    engine = "icrawler:bing"
    [datasets.NAME.classes]
    glasses = "(man OR woman) portrait glasses"            # one web query
    VR = { queries = ["..."], urls = "vr.txt", folders = ["photos/vr"] }
    [datasets.NAME.split]   train = 0.8  valid = 0.2
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dsbuild.dedup.settings import DedupSettings
from dsbuild.errors import DsbuildError, ManifestError, SettingsError, did_you_mean
from dsbuild.executor_settings import ExecutorSettings
from dsbuild.fetch_settings import FetchSettings
from dsbuild.model.settings import ModelSettings
from dsbuild.split import SplitSettings
from dsbuild.verify.settings import HASH_KINDS, QUALITY_FLAGS, QualitySettings, VerifySettings

__all__ = ["DEFAULT_CATALOG", "DEFAULT_MANIFEST", "HASH_KINDS", "QUALITY_FLAGS", "ClassSpec", "Dataset", "DedupSettings",
           "ExecutorSettings", "FetchSettings", "Manifest", "ModelSettings", "QualitySettings", "SplitSettings", "VerifySettings",
           "label_problem", "load_manifest", "name_key", "shown", "parse_manifest"]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MANIFEST = "datasets.toml"
DEFAULT_CATALOG = "catalog/dsbuild.duckdb"


# --------------------------------------------------------------------------- the manifest


@dataclass(frozen=True, kw_only=True)
class ClassSpec:
    """One class (label) and the sources that supply it."""

    name: str
    queries: tuple[str, ...] = ()
    urls: tuple[Path, ...] = ()
    folders: tuple[Path, ...] = ()
    endpoint: str | None = None


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """A ``[datasets.NAME]`` table with ``[defaults]`` merged in.

    ``verify``, ``dedup``, ``split``, ``quality``, ``fetch_settings`` and
    ``model_settings`` are the stages' frozen settings, checked at load; ``fetch``
    and ``model`` keep the tables as written (``model.weights`` relative to the manifest).
    ``warnings``: settings that are valid but that nothing will use (e.g. ``epochs``
    without ``finetune = true``); the CLI prints them once, before it builds or trains.
    """

    name: str
    classes: tuple[ClassSpec, ...]
    description: str = ""
    engine: str = "bing"
    endpoint: str | None = None
    per_query: int = 100
    adult_filter: bool = True
    filters: Mapping[str, str] = field(default_factory=dict)
    allow_private_hosts: bool = False
    verify: VerifySettings = VerifySettings()
    dedup: DedupSettings = DedupSettings()
    split: SplitSettings = SplitSettings()
    quality: QualitySettings = QualitySettings()
    fetch: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)
    imagefolder: Path | None = None
    labels_csv: Path | None = None
    labels_root: Path | None = None
    """The folder a ``labels_csv``'s files must stay in (None: the CSV's folder)."""
    fetch_settings: FetchSettings = FetchSettings()
    model_settings: ModelSettings = ModelSettings()
    executor: ExecutorSettings = ExecutorSettings()
    warnings: tuple[str, ...] = ()

    @property
    def labels(self) -> list[str]:
        """The manifest's class names (an ``imagefolder`` dataset's labels come from its subfolders, a
        ``labels_csv`` dataset's from its CSV)."""
        return [c.name for c in self.classes]


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The whole manifest. Paths are absolute (resolved against the manifest's folder)."""

    path: Path
    catalog: Path
    store: Path
    datasets: Mapping[str, Dataset]
    executor: ExecutorSettings = ExecutorSettings()

    @property
    def root(self) -> Path:
        return self.path.parent

    def dataset(self, name: str) -> Dataset:
        """The dataset called ``name``, or a DsbuildError listing the known ones."""
        if name in self.datasets:
            return self.datasets[name]
        known = ", ".join(self.datasets) or "(none)"
        hint = did_you_mean(name, list(self.datasets))
        raise DsbuildError(f"no dataset '{name}' in {self.path.name}{hint} — known datasets: {known}", exit_code=2)

    def select(self, names: list[str] | tuple[str, ...] | None) -> list[Dataset]:
        """The named datasets (all when ``names`` is empty), in manifest order."""
        if not names:
            return list(self.datasets.values())
        return [self.dataset(n) for n in names]


# --------------------------------------------------------------------------- allow-lists

_TOP_KEYS = {"catalog", "store", "defaults", "datasets", "executor"}
_SECTION_TYPES: dict[str, type] = {
    "verify": VerifySettings,
    "dedup": DedupSettings,
    "split": SplitSettings,
    "quality": QualitySettings,
}
_FETCH_FROM_DATASET = "allow_private_hosts"  # set on the dataset (engines use it too), not in [fetch]
_DATASET_SCALARS: dict[str, type | tuple[type, ...]] = {
    "description": str,
    "engine": str,
    "endpoint": str,
    "per_query": int,
    "adult_filter": bool,
    "allow_private_hosts": bool,
}
_DATASET_KEYS = set(_DATASET_SCALARS) | set(_SECTION_TYPES) | {"classes", "filters", "fetch", "model", "imagefolder",
                                                                "labels_csv", "labels_root", "executor"}
_DEFAULTS_KEYS = _DATASET_KEYS - {"classes", "description", "imagefolder", "labels_csv", "labels_root", "executor"}  # top-level [executor] is the default
_CLASS_KEYS = {"queries", "urls", "folders", "endpoint"}

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_WINDOWS_RESERVED = ({"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {f"COM{i}" for i in "0123456789¹²³"}
                     | {f"LPT{i}" for i in "0123456789¹²³"})
_UNSAFE_LABEL_CHARS = set('/\\:*?"<>|') | {chr(c) for c in range(32)} | {"\x7f"}
_INVISIBLE = ({chr(c) for c in range(0x80, 0xA0)} | {"\u00ad", "\u200b", "\u200e", "\u200f", "\u2028", "\u2029",
                                                     "\u2060", "\ufeff"}
              | {chr(c) for c in range(0x202A, 0x202F)} | {chr(c) for c in range(0x2066, 0x206A)})
"""C1 control characters, zero-width spaces, soft hyphens, byte-order marks and bidi controls: a name holding one
prints like a name without it (``cat\u200b`` looks like ``cat``). ZWJ/ZWNJ (U+200D/U+200C) are letters' glue in
several scripts and emoji, and stay allowed."""
SKIPPED_FOLDER_NAMES = frozenset({"__MACOSX"})
"""Folder names an imagefolder import skips at every level (:data:`dsbuild.sources.folders.NOT_DATA`): a class of
that name would be exported and then lost when the export is imported again."""
MAX_LABEL_BYTES = 255  # a file name's limit in bytes on Linux, macOS and Windows file systems


def shown(name: str) -> str:
    """``name`` quoted for a message, printable whatever it holds: ``repr`` escaping (a newline as ``\\n``), and a
    byte that was not UTF-8 (a file name's surrogate escape) as ``\\xe9``."""
    return re.sub(r"\\udc([89a-f][0-9a-f])", r"\\x\1", repr(name))


def not_utf8(name: str) -> bool:
    """Whether ``name`` (a file name as Python reads it) holds bytes that are not UTF-8 (surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def name_key(name: str) -> str:
    """How class names are compared: Unicode NFC, then case-folded. Two names with one key are one folder on macOS
    (which stores names decomposed, NFD) or Windows (case-insensitive), and one name to a reader."""
    return unicodedata.normalize("NFC", name).casefold()


def name_clash(a: str, b: str) -> str:
    """Why two names with one :func:`name_key` are one name, for a message."""
    if unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b):
        return ("written in two Unicode forms (composed NFC and decomposed NFD, as macOS writes folder names): they "
                "look the same")
    return "to a case-insensitive file system (macOS, Windows): they differ only in case"


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a class name, or None when it is fine: what an export cannot write as a folder name on
    Linux, macOS or Windows, or what an imagefolder import would skip (hidden names, ``__MACOSX``), or a name that is
    not UTF-8 or prints like another. Used for every source's names (manifest classes, imagefolder folders,
    labels_csv labels, URL-list labels)."""
    if not_utf8(label):
        return ("is not valid UTF-8 (a name written in another encoding, e.g. Latin-1 from a zip made on Windows) — "
                "rename it in UTF-8 (e.g. convmv -f latin1 -t utf8 --notest NAME)")
    if not label.strip():
        return "is empty"
    if len(label) > 100:
        return "is longer than 100 characters"
    if len(label.encode("utf-8")) > MAX_LABEL_BYTES:
        return (f"is {len(label.encode('utf-8'))} bytes in UTF-8 — a folder name may have at most {MAX_LABEL_BYTES} "
                "bytes; shorten it")
    if label in {".", ".."} or label.startswith("."):
        return "starts with '.'"
    if label in SKIPPED_FOLDER_NAMES:
        return "is macOS's zip-metadata folder name, which an imagefolder import skips — rename it"
    bad = sorted({ch for ch in label if ch in _UNSAFE_LABEL_CHARS})
    if bad:
        shown_chars = " ".join(repr(ch) for ch in bad)
        return f"contains characters unsafe in folder names ({shown_chars})"
    hidden = sorted({ch for ch in label if ch in _INVISIBLE})
    if hidden:
        return (f"contains invisible or control characters ({' '.join(ascii(ch) for ch in hidden)}) — it would "
                "print like another name; remove them")
    if label != label.strip() or label.endswith("."):
        return "starts or ends with a space or ends with '.'"
    if label.split(".")[0].upper() in _WINDOWS_RESERVED:
        return "is a reserved device name on Windows"
    return None


# --------------------------------------------------------------------------- parsing


class _Problems:
    """Collects problems so that one error lists all of them."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{key}: {message}" if key else message)


def _check_keys(table: Mapping[str, Any], allowed: set[str], prefix: str, problems: _Problems) -> None:
    for key in table:
        if key not in allowed:
            problems.add(f"{prefix}{key}", f"unknown key{did_you_mean(key, allowed)}")


def _as_str_list(value: Any, key: str, problems: _Problems) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.add(key, f"must be a string or a list of strings, not {_type_name(value)}")
        return ()
    out = tuple(v.strip() for v in value)
    if any(not v for v in out):
        problems.add(key, "contains an empty string")
    return tuple(v for v in out if v)


def _as_number_list(value: Any, key: str, problems: _Problems) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v) for v in value):
        problems.add(key, f"must be a list of numbers, not {value!r}")
        return ()
    return tuple(float(v) for v in value)


def _coerce(value: Any, want: Any, key: str, problems: _Problems) -> Any:
    """Check ``value`` against the type of a dataclass default ``want``."""
    if isinstance(want, bool):
        if not isinstance(value, bool):
            problems.add(key, f"must be true or false, not {value!r}")
        return value
    if isinstance(want, int):
        if isinstance(value, bool) or not isinstance(value, int):
            problems.add(key, f"must be an integer, not {value!r}")
        return value
    if isinstance(want, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.add(key, f"must be a number, not {value!r}")
            return value
        return float(value)
    if isinstance(want, str):
        if not isinstance(value, str):
            problems.add(key, f"must be a string, not {value!r}")
        return value
    if isinstance(want, tuple) and want and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in want):
        return _as_number_list(value, key, problems)
    if isinstance(want, tuple):
        return _as_str_list(value, key, problems)
    if want is None:  # optional values: accept scalars and strings
        return value
    return value


def _section_values(cls: type, raw: Any, key: str, problems: _Problems) -> dict[str, Any]:
    """The values of settings table ``raw`` (keys checked, types coerced against ``cls``'s defaults)."""
    if not isinstance(raw, dict):
        problems.add(key, f"must be a table, not {_type_name(raw)}")
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    _check_keys(raw, names, key + ".", problems)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    values = {}
    for name, value in raw.items():
        if name in names:
            before = len(problems.items)
            coerced = _coerce(value, defaults[name], f"{key}.{name}", problems)
            if len(problems.items) == before:  # a bad value keeps the default: later checks do arithmetic on it
                values[name] = coerced
    return values


def _settings(cls: type, values: dict[str, Any], key: str, later: list[tuple[str, str]]) -> Any:
    """``cls(**values)``; its value problems go to ``later`` under ``key`` (reported after the key and type problems)."""
    try:
        return cls(**values)
    except SettingsError as exc:
        later.extend((f"{key}.{p.field}" if p.field else key, p.message) for p in exc.problems)
        return cls()


def _check_engine(ds: Dataset, key: str, problems: _Problems) -> None:
    from dsbuild.sources.engines import ENGINES  # cheap: the crawler libraries load on first use

    if ds.engine not in ENGINES:
        problems.add(f"{key}.engine", f"unknown engine {ds.engine!r}{did_you_mean(ds.engine, set(ENGINES))} — "
                                      f"known engines: {', '.join(sorted(ENGINES))}")


def _parse_class(name: str, raw: Any, key: str, root: Path, problems: _Problems) -> ClassSpec:
    why = label_problem(name)
    if why:
        problems.add(key, f"class name {shown(name)} {why}")
    if isinstance(raw, (str, list)):
        queries = _as_str_list(raw, key, problems)
        if not queries:
            problems.add(key, "has no query")
        return ClassSpec(name=name, queries=queries)
    if not isinstance(raw, dict):
        problems.add(key, f"must be a query string, a list of queries or a table, not {_type_name(raw)}")
        return ClassSpec(name=name)
    _check_keys(raw, _CLASS_KEYS, key + ".", problems)
    queries = _as_str_list(raw.get("queries", []), f"{key}.queries", problems)
    urls = tuple(root / p for p in _as_str_list(raw.get("urls", []), f"{key}.urls", problems))
    folders = tuple(root / p for p in _as_str_list(raw.get("folders", []), f"{key}.folders", problems))
    endpoint = raw.get("endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        problems.add(f"{key}.endpoint", f"must be a string, not {_type_name(endpoint)}")
        endpoint = None
    if not (queries or urls or folders):
        problems.add(key, "has no source — give queries, urls or folders")
    return ClassSpec(name=name, queries=queries, urls=urls, folders=folders, endpoint=endpoint)


def _parse_table_option(raw: Any, key: str, problems: _Problems, *, report: bool = True) -> dict[str, Any]:
    if not isinstance(raw, dict):
        if report:  # [fetch] and [model] are reported by their settings' parse
            problems.add(key, f"must be a table, not {_type_name(raw)}")
        return {}
    return dict(raw)


def _parse_executor(raw: Any, key: str, base: ExecutorSettings, problems: _Problems,
                    later: list[tuple[str, str]]) -> ExecutorSettings:
    """``[executor]`` (``key``: its dotted path) over ``base`` (the top-level table's settings, for a dataset's);
    value problems go to ``later``, as for every settings table."""
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(ExecutorSettings)}
    values.update(_section_values(ExecutorSettings, raw, key, problems))
    return _settings(ExecutorSettings, values, key, later)


def _path_value(raw: dict, name: str, what: str, key: str, root: Path, problems: _Problems) -> Path | None:
    """``raw[name]`` as a path under ``root``; None when absent, or (a problem added) when not a non-empty string."""
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.add(f"{key}.{name}", f"must be {what}, not {value!r}")
        return None
    return root / value


def _parse_dataset(name: str, raw: Any, defaults: Mapping[str, Any], root: Path, problems: _Problems,
                   executor: ExecutorSettings = ExecutorSettings()) -> Dataset | None:
    key = f"datasets.{_quote_key(name)}"
    if not _SAFE_NAME.match(name):
        problems.add(key, "dataset names use letters, digits, '_', '-' and '.', start with a letter or digit, at most 64 characters")
    if not isinstance(raw, dict):
        problems.add(key, f"must be a table, not {_type_name(raw)}")
        return None
    _check_keys(raw, _DATASET_KEYS, key + ".", problems)

    merged: dict[str, Any] = {}
    for k, want in _DATASET_SCALARS.items():
        for source, where in ((defaults, "defaults"), (raw, key)):
            if k in source:
                value = source[k]
                ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
                if not ok:
                    problems.add(f"{where}.{k}", f"must be {_type_name(want())}, not {value!r}")
                else:
                    merged[k] = value
    section_values: dict[str, dict[str, Any]] = {}
    for k, cls in _SECTION_TYPES.items():
        values: dict[str, Any] = {}
        if k in defaults:
            values.update(_section_values(cls, defaults[k], f"defaults.{k}", problems))
        if k in raw:
            values.update(_section_values(cls, raw[k], f"{key}.{k}", problems))
        section_values[k] = values
    split = section_values["split"]

    def written(share: str) -> bool:  # in the dataset's [split] or in [defaults.split]
        return any(isinstance(t.get("split"), dict) and share in t["split"] for t in (raw, defaults))

    if not written("train") and (written("valid") or written("test")):
        # An omitted train fraction takes the rest: valid = 0.3 → train 0.7 (and test 0).
        rest = round(1 - split.get("valid", SplitSettings.valid) - split.get("test", SplitSettings.test), 9)
        if rest > 0:
            split["train"] = rest
    elif not written("test"):
        # An omitted test fraction takes the rest: train 0.7 + valid 0.2 → test 0.1.
        rest = round(1 - split.get("train", SplitSettings.train) - split.get("valid", SplitSettings.valid), 9)
        if rest > 0:
            split["test"] = rest
    later: list[tuple[str, str]] = []  # value problems, reported after the key and type problems
    sections = {k: _settings(cls, section_values[k], f"{key}.{k}", later) for k, cls in _SECTION_TYPES.items()}
    tables: dict[str, dict[str, Any]] = {}
    for k in ("filters", "fetch", "model"):
        merged_table: dict[str, Any] = {}
        for source, where in ((defaults, "defaults"), (raw, key)):
            if k in source:
                merged_table.update(_parse_table_option(source[k], f"{where}.{k}", problems, report=k == "filters"))
        tables[k] = merged_table
    for k, v in tables["filters"].items():
        if not isinstance(v, str):
            problems.add(f"{key}.filters.{k}", f"must be a string, not {v!r}")

    imagefolder = _path_value(raw, "imagefolder", "a folder path", key, root, problems)
    labels_csv = _path_value(raw, "labels_csv", "the path of a CSV file", key, root, problems)
    labels_root = _path_value(raw, "labels_root", "a folder path", key, root, problems)
    if labels_root is not None and labels_csv is None and "labels_csv" not in raw:
        problems.add(f"{key}.labels_root", "is the folder a labels_csv's files stay in — set labels_csv too, or "
                                           "remove it")
    classes_raw = raw.get("classes")
    classes: list[ClassSpec] = []
    if classes_raw is None and (imagefolder is not None or labels_csv is not None):
        pass  # labels (and splits) come from the folder's subfolders or the CSV's rows
    elif classes_raw is None:
        problems.add(f"{key}.classes", "missing — a dataset needs at least two classes (or an imagefolder, or a "
                                       "labels_csv)")
    elif not isinstance(classes_raw, dict):
        problems.add(f"{key}.classes", f"must be a table, not {_type_name(classes_raw)}")
    else:
        if len(classes_raw) < 2 and imagefolder is None and labels_csv is None:
            # with an imagefolder or a labels_csv, the classes are theirs and these together: the build counts them
            problems.add(f"{key}.classes", f"needs at least two classes, found {len(classes_raw)}")
        seen: dict[str, str] = {}
        for cname, craw in classes_raw.items():
            ckey = f"{key}.classes.{_quote_key(cname)}"
            folded = name_key(cname)
            if folded in seen:
                problems.add(ckey, f"class {shown(cname)} and {shown(seen[folded])} are one name "
                                   f"{name_clash(cname, seen[folded])} — keep one of them")
            seen[folded] = cname
            classes.append(_parse_class(cname, craw, ckey, root, problems))

    per_query = merged.get("per_query", 100)
    if per_query < 1:
        problems.add(f"{key}.per_query", f"must be at least 1, not {per_query}")
    fetch_values: dict[str, Any] = {}
    model_values: dict[str, Any] = {}
    model_written: dict[str, str] = {}  # key → the table that set it last
    for source, where in ((defaults, "defaults"), (raw, key)):
        if isinstance(source.get("model"), dict):
            model_written.update(dict.fromkeys(source["model"], f"{where}.model"))
        if "fetch" in source:
            if isinstance(source["fetch"], dict) and _FETCH_FROM_DATASET in source["fetch"]:
                problems.add(f"{where}.fetch.{_FETCH_FROM_DATASET}",
                             f"set it on the dataset ({where}.{_FETCH_FROM_DATASET}), not in [fetch]: the engines use it too")
            fetch_values.update(_section_values(FetchSettings, source["fetch"], f"{where}.fetch", problems))
        if "model" in source:
            model_values.update(_section_values(ModelSettings, source["model"], f"{where}.model", problems))
    fetch_values[_FETCH_FROM_DATASET] = merged.get(_FETCH_FROM_DATASET, False)
    fetch_values.setdefault("max_bytes", sections["verify"].max_bytes)  # a download may be as large as a file
    if isinstance(model_values.get("weights"), str):
        model_values["weights"] = root / model_values["weights"]  # an absolute path stays as it is
    ds = Dataset(
        name=name,
        classes=tuple(classes),
        description=merged.get("description", ""),
        engine=merged.get("engine", "bing"),
        endpoint=merged.get("endpoint"),
        per_query=per_query,
        adult_filter=merged.get("adult_filter", True),
        allow_private_hosts=merged.get("allow_private_hosts", False),
        filters=tables["filters"],
        fetch=tables["fetch"],
        model=tables["model"],
        imagefolder=imagefolder,
        labels_csv=labels_csv,
        labels_root=labels_root,
        fetch_settings=_settings(FetchSettings, fetch_values, f"{key}.fetch", later),
        model_settings=_settings(ModelSettings, model_values, f"{key}.model", later),
        executor=_parse_executor(raw["executor"], f"{key}.executor", executor, problems, later) if "executor" in raw
        else executor,
        **sections,
    )
    _check_engine(ds, key, problems)
    for where, message in later:
        problems.add(where, message)
    unused = ds.model_settings.unused(k for k in model_written if k in model_values)
    if unused:
        ds = dataclasses.replace(ds, warnings=tuple(
            f"{model_written[k]}: {k} = {model_values[k]!r} is used only with finetune = true — {key}.model trains a "
            f"logistic head on frozen features, which has no epochs; set finetune = true to fine-tune the whole "
            f"network, or remove {k}" for k in unused))
    return ds


def _quote_key(name: str) -> str:
    return name if re.match(r"^[A-Za-z0-9_-]+$", name) else '"' + name.replace('"', '\\"') + '"'


def parse_manifest(text: str, path: Path) -> Manifest:
    """Parse manifest ``text`` read from ``path``; raise ManifestError listing every problem."""
    path = path.resolve()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path.name}: invalid TOML: {exc} — fix the syntax and run again") from None
    problems = _Problems()
    _check_keys(data, _TOP_KEYS, "", problems)
    root = path.parent

    def _path_key(k: str, default: str) -> Path:
        value = data.get(k, default)
        if not isinstance(value, str) or not value.strip():
            problems.add(k, f"must be a path string, not {value!r}")
            value = default
        return (root / value).resolve()

    catalog = _path_key("catalog", DEFAULT_CATALOG)
    store = _path_key("store", str((catalog.parent / "store").relative_to(root)) if catalog.is_relative_to(root) else str(catalog.parent / "store"))

    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.add("defaults", f"must be a table, not {_type_name(defaults)}")
        defaults = {}
    _check_keys(defaults, _DEFAULTS_KEYS, "defaults.", problems)

    later: list[tuple[str, str]] = []
    executor = _parse_executor(data["executor"], "executor", ExecutorSettings(), problems, later) if "executor" in data \
        else ExecutorSettings()
    for where, message in later:
        problems.add(where, message)
    datasets_raw = data.get("datasets", {})
    datasets: dict[str, Dataset] = {}
    if not isinstance(datasets_raw, dict):
        problems.add("datasets", f"must be a table of datasets, not {_type_name(datasets_raw)}")
    elif not datasets_raw:
        problems.add("datasets", "no dataset defined — add a [datasets.NAME] table with [datasets.NAME.classes]")
    else:
        for name, raw in datasets_raw.items():
            ds = _parse_dataset(name, raw, defaults, root, problems, executor)
            if ds is not None:
                datasets[name] = ds

    if problems.items:
        shown = problems.items[:25]
        more = len(problems.items) - len(shown)
        lines = "\n  ".join(shown)
        tail = f"\n  … and {more} more" if more else ""
        noun = "problem" if len(problems.items) == 1 else "problems"
        raise ManifestError(f"{path.name}: {len(problems.items)} {noun}:\n  {lines}{tail}")
    return Manifest(path=path, catalog=catalog, store=store, datasets=datasets, executor=executor)


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read and validate the manifest at ``path`` (default ``./datasets.toml``)."""
    path = Path(path or DEFAULT_MANIFEST)
    if not path.exists():
        raise DsbuildError(
            f"no manifest at {path if path.is_absolute() else f'{path} in {Path.cwd()}'} — run `dsbuild init` to "
            "write a starter one, or pass -m PATH", exit_code=2
        )
    if path.is_dir():
        raise DsbuildError(f"{path} is a folder, not a manifest file — pass -m PATH/datasets.toml", exit_code=2)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{path.name}: not UTF-8 text — save the manifest as UTF-8") from None
    except OSError as exc:
        raise DsbuildError(f"cannot read manifest {path}: {exc.strerror}", exit_code=2) from None
    return parse_manifest(text, path)
