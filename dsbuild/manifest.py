"""The manifest: ``datasets.toml`` parsed into frozen dataclasses.

Every problem is reported with the manifest file, the dotted key path and the
bad value, e.g. ``datasets.eyewear.per_querry: unknown key (did you mean
'per_query'?)``. All problems are collected and raised together as one
:class:`~dsbuild.errors.ManifestError`, before anything is downloaded or written.

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
import difflib
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dsbuild.errors import DsbuildError, ManifestError
from dsbuild.executor_settings import ExecutorSettings, ExecutorSettingsError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MANIFEST = "datasets.toml"
DEFAULT_CATALOG = "catalog/dsbuild.duckdb"
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
HASH_KINDS = ("phash", "dhash", "whash", "ahash")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, kw_only=True)
class VerifySettings:
    """Limits applied to every image before it is accepted.

    ``max_pixels`` guards against decompression bombs (an image declaring more
    pixels is rejected before its pixels are decoded); ``formats`` is the
    allow-list of format families (:data:`dsbuild.formats.FAMILIES`; EPS/PSD and
    other risky parsers are never allowed); ``max_bytes`` caps the file size read
    from disk or the web; ``time_limit`` is the most seconds verifying one image
    may take (default 30: an 89-megapixel PNG takes ~5 s on a busy core) — past
    it the image is rejected as ``timeout`` and its worker replaced, so a decoder
    that never returns cannot hold a build.
    """

    min_side: int = 32
    max_aspect_ratio: float = 6.0
    max_pixels: int = 89_478_485
    max_bytes: int = 20_000_000
    formats: tuple[str, ...] = IMAGE_FORMATS
    time_limit: float = 30.0


@dataclass(frozen=True, kw_only=True)
class DedupSettings:
    """Perceptual hashing and near-duplicate grouping.

    ``threshold`` is the largest Hamming distance between two hashes that makes
    them near duplicates (0 keeps exact duplicates only). ``cross_class`` says
    what to do with a group whose members carry different labels: ``"flag"``
    marks it as a label conflict for review (nothing is dropped silently).
    """

    hash: str = "phash"
    hash_size: int = 8
    threshold: int = 10  # dsbuild.dedup.DEFAULT_THRESHOLD, measured by bench/dup_quality.py
    near: bool = True
    cross_class: str = "flag"


@dataclass(frozen=True, kw_only=True)
class SplitSettings:
    """Train/valid/test fractions (summing to 1) and the seed of the split hash."""

    train: float = 0.8
    valid: float = 0.2
    test: float = 0.0
    seed: int = 42


@dataclass(frozen=True, kw_only=True)
class QualitySettings:
    """CleanVision-style quality checks: which flags reject, and their thresholds.

    A flag listed in ``reject`` turns the image's status into ``rejected`` with
    reason ``quality: <flag>``; other flags are only reported.
    """

    reject: tuple[str, ...] = ()
    dark: float = 0.32
    light: float = 0.05
    blurry: float = 0.29
    low_information: float = 0.3
    odd_aspect_ratio: float = 0.35
    odd_size_iqr_factor: float = 3.0


QUALITY_FLAGS = ("dark", "light", "blurry", "low_information", "grayscale", "odd_aspect_ratio", "odd_size")


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
    """A ``[datasets.NAME]`` table with ``[defaults]`` merged in."""

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
    executor: ExecutorSettings = ExecutorSettings()

    @property
    def labels(self) -> list[str]:
        """The manifest's class names (an ``imagefolder`` dataset's labels come from its subfolders)."""
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
        hint = _did_you_mean(name, list(self.datasets))
        raise DsbuildError(f"no dataset '{name}' in {self.path.name}{hint} — known datasets: {known}")

    def select(self, names: list[str] | tuple[str, ...] | None) -> list[Dataset]:
        """The named datasets (all when ``names`` is empty), in manifest order."""
        if not names:
            return list(self.datasets.values())
        return [self.dataset(n) for n in names]


# --------------------------------------------------------------------------- allow-lists

_TOP_KEYS = {"catalog", "store", "defaults", "datasets", "executor"}
_SECTION_TYPES = {
    "verify": VerifySettings,
    "dedup": DedupSettings,
    "split": SplitSettings,
    "quality": QualitySettings,
}
_DATASET_SCALARS: dict[str, type | tuple[type, ...]] = {
    "description": str,
    "engine": str,
    "endpoint": str,
    "per_query": int,
    "adult_filter": bool,
    "allow_private_hosts": bool,
}
_DATASET_KEYS = set(_DATASET_SCALARS) | set(_SECTION_TYPES) | {"classes", "filters", "fetch", "model", "imagefolder",
                                                                "executor"}
_DEFAULTS_KEYS = _DATASET_KEYS - {"classes", "description", "imagefolder", "executor"}  # top-level [executor] is the default
_CLASS_KEYS = {"queries", "urls", "folders", "endpoint"}

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(1, 10)} | {f"LPT{i}" for i in range(1, 10)}
_UNSAFE_LABEL_CHARS = set('/\\:*?"<>|') | {chr(c) for c in range(32)} | {"\x7f"}


def _did_you_mean(word: str, choices: list[str] | set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def label_problem(label: str) -> str | None:
    """Why ``label`` is unsafe as a folder name, or None when it is fine."""
    if not label.strip():
        return "is empty"
    if len(label) > 100:
        return "is longer than 100 characters"
    if label in {".", ".."} or label.startswith("."):
        return "starts with '.'"
    bad = sorted({ch for ch in label if ch in _UNSAFE_LABEL_CHARS})
    if bad:
        shown = " ".join(repr(ch) for ch in bad)
        return f"contains characters unsafe in folder names ({shown})"
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
            problems.add(f"{prefix}{key}", f"unknown key{_did_you_mean(key, allowed)}")


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
    if isinstance(want, tuple):
        return _as_str_list(value, key, problems)
    if want is None:  # optional values: accept scalars and strings
        return value
    return value


def _parse_section(cls: type, raw: Any, base: Any, key: str, problems: _Problems) -> Any:
    """Build settings ``cls`` from a TOML table on top of ``base``."""
    if not isinstance(raw, dict):
        problems.add(key, f"must be a table, not {_type_name(raw)}")
        return base
    names = {f.name for f in dataclasses.fields(cls)}
    _check_keys(raw, names, key + ".", problems)
    values = {}
    for name, value in raw.items():
        if name in names:
            before = len(problems.items)
            coerced = _coerce(value, getattr(base, name), f"{key}.{name}", problems)
            if len(problems.items) == before:  # a bad value keeps the default: later checks do arithmetic on it
                values[name] = coerced
    try:
        return dataclasses.replace(base, **values)
    except TypeError as exc:  # pragma: no cover - guarded by the key check above
        problems.add(key, str(exc))
        return base


def _check_section_values(ds: Dataset, key: str, problems: _Problems) -> None:
    from dsbuild.sources.engines import ENGINES  # cheap: the crawler libraries load on first use

    if ds.engine not in ENGINES:
        problems.add(f"{key}.engine", f"unknown engine {ds.engine!r}{_did_you_mean(ds.engine, set(ENGINES))} — "
                                      f"known engines: {', '.join(sorted(ENGINES))}")
    v, d, s, q = ds.verify, ds.dedup, ds.split, ds.quality
    if v.min_side < 1:
        problems.add(f"{key}.verify.min_side", f"must be at least 1, not {v.min_side}")
    if v.max_aspect_ratio < 1:
        problems.add(f"{key}.verify.max_aspect_ratio", f"must be at least 1, not {v.max_aspect_ratio}")
    if v.max_pixels < 1:
        problems.add(f"{key}.verify.max_pixels", f"must be positive, not {v.max_pixels}")
    if v.max_bytes < 1:
        problems.add(f"{key}.verify.max_bytes", f"must be positive, not {v.max_bytes}")
    if not v.time_limit > 0:
        problems.add(f"{key}.verify.time_limit", f"must be a positive number of seconds, not {v.time_limit}")
    for fmt in v.formats:
        if fmt.upper() not in IMAGE_FORMATS:
            problems.add(
                f"{key}.verify.formats", f"'{fmt}' is not allowed — allowed formats: {', '.join(IMAGE_FORMATS)}"
            )
    if d.hash not in HASH_KINDS:
        problems.add(f"{key}.dedup.hash", f"unknown hash '{d.hash}'{_did_you_mean(d.hash, set(HASH_KINDS))} — known: {', '.join(HASH_KINDS)}")
    if d.hash_size not in (4, 6, 8, 12, 16):
        problems.add(f"{key}.dedup.hash_size", f"must be one of 4, 6, 8, 12, 16, not {d.hash_size}")
    if not 0 <= d.threshold <= 32:
        problems.add(f"{key}.dedup.threshold", f"must be between 0 and 32, not {d.threshold}")
    if d.cross_class not in ("flag",):
        problems.add(f"{key}.dedup.cross_class", f"must be 'flag', not {d.cross_class!r}")
    for name in ("train", "valid", "test"):
        frac = getattr(s, name)
        if not 0 <= frac <= 1:
            problems.add(f"{key}.split.{name}", f"must be between 0 and 1, not {frac}")
    total = s.train + s.valid + s.test
    if s.train <= 0:
        problems.add(f"{key}.split.train", "must be greater than 0")
    if abs(total - 1) > 1e-6:
        problems.add(
            f"{key}.split",
            f"fractions must add up to 1 (train {s.train} + valid {s.valid} + test {s.test} = {round(total, 6)})",
        )
    for flag in q.reject:
        if flag not in QUALITY_FLAGS:
            problems.add(f"{key}.quality.reject", f"unknown flag '{flag}'{_did_you_mean(flag, set(QUALITY_FLAGS))} — known: {', '.join(QUALITY_FLAGS)}")


def _parse_class(name: str, raw: Any, key: str, root: Path, problems: _Problems) -> ClassSpec:
    why = label_problem(name)
    if why:
        problems.add(key, f"class name {name!r} {why}")
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


def _parse_table_option(raw: Any, key: str, problems: _Problems) -> dict[str, Any]:
    if not isinstance(raw, dict):
        problems.add(key, f"must be a table, not {_type_name(raw)}")
        return {}
    return dict(raw)


def _parse_executor(raw: Any, key: str, base: ExecutorSettings, problems: _Problems) -> ExecutorSettings:
    """``[executor]`` (``key``: its dotted path) over ``base`` (the top-level table's settings, for a dataset's)."""
    if not isinstance(raw, dict):
        problems.add(key, f"must be a table, not {_type_name(raw)}")
        return base
    names = [f.name for f in dataclasses.fields(ExecutorSettings)]
    _check_keys(raw, set(names), key + ".", problems)
    values = {**{n: getattr(base, n) for n in names}, **{k: v for k, v in raw.items() if k in names}}
    try:
        return ExecutorSettings(**values)
    except ExecutorSettingsError as exc:
        for name, message in exc.problems:
            problems.add(f"{key}.{name}", message)
        return base


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
    sections: dict[str, Any] = {}
    for k, cls in _SECTION_TYPES.items():
        value = cls()
        if k in defaults:
            value = _parse_section(cls, defaults[k], value, f"defaults.{k}", problems)
        if k in raw:
            value = _parse_section(cls, raw[k], value, f"{key}.{k}", problems)
        sections[k] = value
    if "test" not in raw.get("split", {}) and "test" not in defaults.get("split", {}) and isinstance(sections["split"], SplitSettings):
        # An omitted test fraction takes the rest: train 0.7 + valid 0.2 → test 0.1.
        s = sections["split"]
        rest = round(1 - s.train - s.valid, 9)
        if rest > 0:
            sections["split"] = dataclasses.replace(s, test=rest)
    tables: dict[str, dict[str, Any]] = {}
    for k in ("filters", "fetch", "model"):
        merged_table: dict[str, Any] = {}
        for source, where in ((defaults, "defaults"), (raw, key)):
            if k in source:
                merged_table.update(_parse_table_option(source[k], f"{where}.{k}", problems))
        tables[k] = merged_table
    for k, v in tables["filters"].items():
        if not isinstance(v, str):
            problems.add(f"{key}.filters.{k}", f"must be a string, not {v!r}")

    imagefolder = raw.get("imagefolder")
    if imagefolder is not None:
        if not isinstance(imagefolder, str) or not imagefolder.strip():
            problems.add(f"{key}.imagefolder", f"must be a folder path, not {imagefolder!r}")
            imagefolder = None
        else:
            imagefolder = root / imagefolder
    classes_raw = raw.get("classes")
    classes: list[ClassSpec] = []
    if classes_raw is None and imagefolder is not None:
        pass  # labels (and splits) come from the folder's subfolders
    elif classes_raw is None:
        problems.add(f"{key}.classes", "missing — a dataset needs at least two classes (or an imagefolder)")
    elif not isinstance(classes_raw, dict):
        problems.add(f"{key}.classes", f"must be a table, not {_type_name(classes_raw)}")
    else:
        if len(classes_raw) < 2:
            problems.add(f"{key}.classes", f"needs at least two classes, found {len(classes_raw)}")
        seen: dict[str, str] = {}
        for cname, craw in classes_raw.items():
            ckey = f"{key}.classes.{_quote_key(cname)}"
            folded = cname.casefold()
            if folded in seen:
                problems.add(ckey, f"class {cname!r} differs from {seen[folded]!r} only in case (folders would clash)")
            seen[folded] = cname
            classes.append(_parse_class(cname, craw, ckey, root, problems))

    per_query = merged.get("per_query", 100)
    if per_query < 1:
        problems.add(f"{key}.per_query", f"must be at least 1, not {per_query}")
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
        executor=_parse_executor(raw["executor"], f"{key}.executor", executor, problems) if "executor" in raw else executor,
        **sections,
    )
    _check_section_values(ds, key, problems)
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

    executor = _parse_executor(data["executor"], "executor", ExecutorSettings(), problems) if "executor" in data \
        else ExecutorSettings()
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
            f"no manifest at {path} — run `dsbuild init` to write a starter one, or pass -m PATH", exit_code=2
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
