"""Review regroups the duplicate groups it touches (fresh-user trial 3, finding 5).

A cat photo, an exact copy of it and a 2× upscaled copy filed under ``dog``: the build groups the three around
the upscale (the most pixels), a label conflict. Removing both dog copies in review (README's fix for a conflict)
left the cat photo ``duplicate`` of a rejected image — out of export and training until a build or ``embed``.
Real photos, a real DuckDB catalog, the CLI in-process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from helpers import photo_quadrant, run_cli, sql

pytestmark = pytest.mark.usefixtures("wide_terminal")

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "clock")


def quadrant(name: str, k: int, size: int = 96) -> Image.Image:
    return photo_quadrant(name, k, size)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    img = tmp_path / "img"
    for c, label in enumerate(("cat", "dog")):
        (img / label).mkdir(parents=True)
        for i in range(4):
            quadrant(PHOTOS[c * 4 + i], (c + i) % 4).save(img / label / f"{label}{i}.png")
    original = quadrant("chelsea", 3)
    original.save(img / "cat" / "tabby.png")
    original.save(img / "dog" / "copy-tabby.png")
    original.resize((192, 192), Image.Resampling.LANCZOS).save(img / "dog" / "big-tabby.png")
    manifest = tmp_path / "datasets.toml"
    manifest.write_text(f'catalog = "catalog/dsbuild.duckdb"\n[datasets.pets.split]\ntrain = 0.5\nvalid = 0.5\n'
                        f'[datasets.pets.classes]\ncat = {{ folders = "{img / "cat"}" }}\n'
                        f'dog = {{ folders = "{img / "dog"}" }}\n')
    return manifest


def tabbies(manifest: Path) -> dict[str, tuple]:
    """file name → (status, reason, dup_group is set, dup_of's file name, conflict) of the three tabby files."""
    rows = sql(manifest, "SELECT image_id, origin, status, reason, dup_group, dup_of, conflict FROM images "
                         "WHERE origin LIKE '%tabby.png'")
    name = {r[0]: Path(r[1]).name for r in rows}
    return {Path(r[1]).name: (r[2], r[3], r[4] is not None, name.get(r[5]), r[6]) for r in rows}


def ids(manifest: Path) -> dict[str, str]:
    return {Path(o).name: i for i, o in sql(manifest, "SELECT image_id, origin FROM images")}


def decide(capsys, manifest: Path, rows: list[tuple[str, str]]) -> str:
    csv = manifest.parent / "d.csv"
    csv.write_text("image_id,action,new_label\n" + "".join(f"{i},{a},\n" for i, a in rows))
    code, out, err = run_cli(capsys, manifest, "review", "pets", "--decisions", str(csv))
    assert code == 0, err
    return out


def test_removing_a_groups_representative_makes_the_copy_left_its_own_image_at_once(project: Path, capsys) -> None:
    assert run_cli(capsys, project, "build", "-q")[0] == 0
    before = tabbies(project)
    assert before == {"big-tabby.png": ("ok", None, True, None, True),
                      "copy-tabby.png": ("duplicate", "near duplicate", True, "big-tabby.png", True),
                      "tabby.png": ("duplicate", "near duplicate", True, "big-tabby.png", True)}
    i = ids(project)

    decide(capsys, project, [(i["big-tabby.png"], "remove"), (i["copy-tabby.png"], "remove")])
    after = tabbies(project)
    assert after["tabby.png"] == ("ok", None, False, None, False)
    assert after["big-tabby.png"] == ("rejected", "removed in review", False, None, False)
    assert after["copy-tabby.png"] == ("rejected", "removed in review", False, None, False)
    assert sql(project, "SELECT count(*) FROM conflicts")[0][0] == 0
    code, out, err = run_cli(capsys, project, "export", "pets", "--format", "csv", "--to", str(project.parent / "x.csv"))
    assert code == 0, err
    assert "tabby.png" in (project.parent / "x.csv").read_text()
    assert "exported 9 images of 'pets'" in " ".join(out.split())

    decide(capsys, project, [(i["big-tabby.png"], "undo")])  # the upscale comes back: the group again
    back = tabbies(project)
    assert back["big-tabby.png"] == ("ok", None, True, None, True)
    assert back["tabby.png"][:4] == ("duplicate", "near duplicate", True, "big-tabby.png")
    assert back["copy-tabby.png"][:3] == ("rejected", "removed in review", False)
    decide(capsys, project, [(i["copy-tabby.png"], "undo")])
    assert tabbies(project) == before  # as the build left them

    assert run_cli(capsys, project, "build", "-q")[0] == 0  # and a build agrees
    assert tabbies(project) == before


def test_build_summaries_count_accepted_images_as_status_does(project: Path, capsys) -> None:
    """Trial 3, finding 9: after 2 removes the build's "up to date — N accepted images (train …, valid …)" and
    its table's train/valid columns still counted them; `status` did not."""
    assert run_cli(capsys, project, "build", "-q")[0] == 0
    split = dict(sql(project, "SELECT split, count(*) FROM images WHERE status = 'ok' GROUP BY 1"))
    assert sum(split.values()) == 9
    removed = [i for i, in sql(project, "SELECT image_id FROM images WHERE status = 'ok' AND split = 'train' "
                                        "AND origin NOT LIKE '%tabby.png' AND origin NOT LIKE '%cat0.png' "
                                        "ORDER BY image_id LIMIT 2")]
    decide(capsys, project, [(i, "remove") for i in removed])
    code, out, err = run_cli(capsys, project, "build")
    assert code == 0, err
    train, valid = split["train"] - 2, split["valid"]
    assert (f"pets: up to date — 7 accepted images (train {train}, valid {valid}), 2 duplicates, 1 label conflict; "
            "nothing new in 11 sources") in " ".join(out.split())
    code, out, err = run_cli(capsys, project, "status", "pets")
    assert f"│ total │ {train} │ {valid} │ 2 │ 2 │" in " ".join(out.split()), out

    gone, = sql(project, "SELECT split FROM images WHERE origin LIKE '%cat0.png'")[0]
    (project.parent / "img" / "cat" / "cat0.png").unlink()  # a build with a change: its table row
    code, out, err = run_cli(capsys, project, "build")
    assert code == 0, err
    row = next(line.split("│")[1:-1] for line in out.splitlines() if line.startswith("│ pets"))
    assert [c.strip() for c in row][-3:] == [str(train - (gone == "train")), str(valid - (gone == "valid")), "0"]
