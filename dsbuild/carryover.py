"""Images back under another class keep their split and their review decisions.

An item's id hashes its label (:func:`dsbuild.rows.image_id_for`), so a class renamed, merged into another or
split in two gives its images new items, and the build sets the old ones aside (reason ``source removed``,
:data:`dsbuild.sources.SOURCE_REMOVED`). A new item that comes from the same file as a set-aside one — the same
origin and the same content (sha256) — is the same picture under a new class name. :func:`carry_over` gives it:

* the old item's split (when it still has one: the build that sets an item aside clears its split), so a
  rename, merge or split of classes moves no image to another split — stable splits, as for added images;
  an item without one gets a split as any new image does; an item whose source now gives it another split (a
  labels CSV's ``split`` column edited with the label, a file moved to another split folder) takes that one, as
  any image whose given split changed;
* the old item's standing review decisions, as label events on the new item
  (:func:`dsbuild.decisions.carried_events`: a remove stays removed, a keep kept, a relabel to a label that is
  still a class stays; one to a label that is gone is not carried, and counted).

A file moved keeps its content but not its origin: an ``imagefolder`` dataset's class renamed (``mv photos/ship
photos/boat``: the folder is the class) or a class's folder moved in a ``classes`` manifest. A set-aside item whose
origin no item supplies any more (its file left that place), with the content of a new item from elsewhere, is the
same picture moved — unless its decisions were carried over to another item already. Exact duplicates (several
files with one content) are paired so that no set-aside item is given to two new items
(:func:`pair_successors`): first the same origin, then the same file name (when one new item of that content has
that name), then the one set-aside item left for the one new item left (set aside last); new items left over take
nothing (the copies cannot be told apart: a review decision is not guessed onto one of them).

The old row and its history are left as they are. When several set-aside items match, the latest set aside
is taken: it carries what came before it. An item set aside before that comes back (the class renamed back)
takes the split of the item set aside in its place, and its review decisions unless it has a history of its
own (then that stands). A build killed before it could carry over leaves its new items unsplit: the next
build carries over to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable

from dsbuild.catalog import Catalog
from dsbuild.decisions import Successor, carried_events
from dsbuild.manifest import Dataset
from dsbuild.sources import SOURCE_REMOVED

MAX_CHANGES = 3  # class changes named in the build's note; the rest are an ellipsis
MAX_IDS = 5  # image_ids named in the build's note for images left with a label that is no longer a class


@dataclass(frozen=True)
class CarryOver:
    """What :func:`carry_over` did to one dataset.

    ``images``: new items that succeed a set-aside item; ``kept_split``: of them, those given its split;
    ``moved_split``: those whose source gives them another split than the old item had (they take that one);
    ``given_by``: that source, ``labels_csv`` or ``imagefolder``;
    ``decisions``: review decisions in effect on them; ``lost``: label no longer a class → decisions that
    could not be carried; ``changes``: the class changes, in words (``class 'cat' renamed 'kitty'``);
    ``followed``: (gone class, its successor) → images relabelled in review to the gone class, left in place,
    relabelled to its successor; ``stranded``: a class split (which part is ambiguous) → the image_ids relabelled
    in review to it, left with a label that is no longer a class; ``dataset``: its name, for the hint;
    ``agreed``: of ``decisions``, relabels whose label the source now gives (carried as keeps, still the reviewer's);
    ``edited``: the set-aside items whose file the source now gives another label that was and is a class — a label
    edited in a labels CSV, no class renamed, merged or split (trial 11, M4): the build's note says so, and neither
    counts them as rejected nor among the items set aside; ``source_name``: the labels CSV's file name, for the note.
    """

    images: int = 0
    kept_split: int = 0
    moved_split: int = 0
    given_by: str = "labels_csv"
    decisions: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    changes: tuple[str, ...] = ()
    followed: dict[tuple[str, str], int] = field(default_factory=dict)
    stranded: dict[str, tuple[str, ...]] = field(default_factory=dict)
    dataset: str = "DATASET"
    agreed: int = 0
    edited: frozenset[str] = frozenset()
    source_name: str = "labels.csv"

    def note(self, *, resplit: bool = False) -> str | None:
        """The build summary's line, e.g. ``12 images under a renamed, merged or split class (class 'cat'
        renamed 'kitty') kept their split and 3 review decisions (2 could not be carried: label 'pony' is
        no longer a class)``, then what happened to images relabelled in review to a class that is gone; None
        when no image came back under another class. ``resplit`` (``build --resplit``): the splits they kept are
        assigned again with every other image's, so the note does not say they kept them."""
        if not self.images:
            return None
        return self._carried(resplit=resplit) + self._agreed() + self._followed()

    def _agreed(self) -> str:
        """The sentence on relabels whose label the source now gives (after a ``; ``), or ''."""
        if not self.agreed:
            return ""
        from dsbuild.render.values import counted

        source = "the labels CSV" if self.given_by == "labels_csv" else "the source"
        one = self.agreed == 1
        return (f"; {counted(self.agreed, 'image')} relabelled in review {'has' if one else 'have'} that label in "
                f"{source} now: {'its' if one else 'their'} relabel stands as the review decision it was (carried "
                "as a keep: --accept-suggestions does not overrule a person's)")

    def _followed(self) -> str:
        """The sentences on images relabelled in review to a class that is gone (after a ``; ``), or ''."""
        from dsbuild.render.values import counted

        parts = []
        for (old, new), n in sorted(self.followed.items()):
            parts.append(f"{counted(n, 'image')} relabelled in review to '{old}' now {'has' if n == 1 else 'have'} "
                         f"label '{new}'")
        if self.stranded:
            n = sum(len(v) for v in self.stranded.values())
            ids = [i for label in sorted(self.stranded) for i in self.stranded[label]]
            shown = ", ".join(ids[:MAX_IDS]) + (f", … ({len(ids) - MAX_IDS} more)" if len(ids) > MAX_IDS else "")
            gone = sorted(self.stranded)
            names = ", ".join(f"'{g}'" for g in gone)
            what = f"label {names}, which is no longer a class (split: which part is not guessed)" if len(gone) == 1 \
                else f"labels {names}, which are no longer classes (split: which part is not guessed)"
            keeps = "keeps" if n == 1 else "keep"
            them = "it" if n == 1 else "them"
            parts.append(f"{counted(n, 'image')} relabelled in review {keeps} {what}: {shown} — relabel {them} in a "
                         "decisions CSV (image_id,action,new_label: <id>,relabel,<class>) and run "
                         f"`dsbuild review {self.dataset} --decisions FILE`")
        return "".join(f"; {p}" for p in parts)

    def _carried(self, *, resplit: bool = False) -> str:
        from dsbuild.render.values import counted

        changes = "; ".join(self.changes[:MAX_CHANGES]) + ("; …" if len(self.changes) > MAX_CHANGES else "")
        head = f"{counted(self.images, 'image')} under a renamed, merged or split class ({changes})"
        if self.edited and len(self.edited) == self.images:  # only labels edited in the source: say that
            where = self.source_name if self.given_by == "labels_csv" else "the source"
            rows = "the same file, its earlier row" if self.images == 1 else "the same files, their earlier rows"
            head = (f"{counted(self.images, 'image')} given another label in {where} ({changes}; {rows} kept in the "
                    "catalog as 'source removed')")
        carried = counted(self.decisions, "review decision") if self.decisions else ""
        lost = ""
        if self.lost:
            n = sum(self.lost.values())
            gone = sorted(self.lost)
            names = ", ".join(f"'{g}'" for g in gone)
            what = f"label {names} is no longer a class" if len(gone) == 1 else f"labels {names} are no longer classes"
            lost = f"{n if carried else counted(n, 'review decision')} could not be carried: {what}"
        decisions = f"{carried} ({lost})" if carried and lost else carried
        fresh = self.images - self.kept_split - self.moved_split
        if resplit:  # whatever split they kept, --resplit assigns it again from the settings
            again = "--resplit assigns their splits again from the settings, as every image's"
            if carried:
                return f"{head} kept {decisions}; {again}"
            return f"{head}: {lost}; {again}" if lost else f"{head}: {again}"
        if self.moved_split:  # their source gives them another split now: it is not kept, and it is the source's doing
            where = ("to the split that the labels CSV's split column now names" if self.given_by == "labels_csv"
                     else f"with {'its file' if self.moved_split == 1 else 'their files'} to another split folder")
            parts = [f"{self.kept_split} kept {'its' if self.kept_split == 1 else 'their'} split"] if self.kept_split else []
            parts.append(f"{self.moved_split} moved {where}")
            if fresh:
                parts.append(f"{fresh} set aside by an earlier build had none and took one as new images do")
            splits = ", ".join(parts)
            if carried:
                return f"{head} kept {decisions}; {splits}"
            return f"{head}: {lost}; {splits}" if lost else f"{head}: {splits}"
        if self.kept_split:
            text = f"{head} kept their split"
            if fresh:
                text += f" ({fresh} set aside by an earlier build had none and took one as new images do)"
            return f"{text} and {decisions}" if carried else (f"{text}; {lost}" if lost else text)
        # Set aside by an earlier build (which cleared their splits): new splits, as new images get.
        text = f"{head} kept {decisions};" if carried else (f"{head}: {lost};" if lost else f"{head}:")
        text += " set aside by an earlier build, they had no split to keep and took one as new images do"
        return text


def carry_over(cat: Catalog, ds: Dataset, candidates: Iterable[str], *, labels_before: Iterable[str], build_id: int,
               at: datetime) -> CarryOver:
    """Give the items ``candidates`` of ``ds`` (:func:`dsbuild.pipeline.successor_candidates`: created or brought
    back by this build, or not split yet) the split and review decisions of the set-aside items they succeed
    (module doc). A successor with a split keeps it; one with review events of its own (an item brought back
    with its own history) keeps them and takes none. ``labels_before``: the labels the dataset's sources gave
    before this build (a class that took images of another existed: a merge, not a rename). Run after the build
    set its removed sources aside and before it regroups; writes the splits and the label events (source
    ``build:<build_id>``) in the catalog."""
    ids = sorted(set(candidates))
    if not ids:
        return CarryOver()
    pairs = cat.set_aside_matches(ds.name, ids, reason=SOURCE_REMOVED)
    if pairs.empty:
        return CarryOver()
    pairs = pair_successors(pairs)
    if pairs.empty:
        return CarryOver()
    labels = set(ds.labels) | set(cat.source_labels(ds.name, set_aside=SOURCE_REMOVED))
    kinds: dict[tuple[str, str], set[bool]] = {}
    for r in pairs.itertuples(index=False):
        kinds.setdefault((r.old_label, r.class_label), set()).add(r.origin != r.old_origin)
    why = class_changes(list(zip(pairs["old_label"], pairs["class_label"])), labels, set(labels_before),
                        moved={k for k, v in kinds.items() if v == {True}}, folders=ds.imagefolder is not None)
    follow, split = successor_classes(why, labels)
    # A successor whose source gives it another split than its old item had (a labels CSV's split column edited
    # with the label) takes the given one at the regrouping: it does not inherit the old one, and is counted apart.
    carve = ds.split.carve.source if ds.split.carve else None
    moved = {r.image_id for r in pairs.itertuples(index=False) if isinstance(r.old_split, str)
             and isinstance(r.given_split, str) and r.given_split != r.old_split and r.given_split != carve}
    splits = {r.image_id: r.old_split for r in pairs.itertuples(index=False)
              if isinstance(r.old_split, str) and r.image_id not in moved}
    kept_split = cat.inherit_splits(ds.name, splits)
    history = cat.label_history(ds.name, image_ids=sorted(set(pairs["old_id"]) | set(pairs["image_id"])))
    own = set(history["image_id"]) - set(pairs["old_id"])  # successors with events of their own
    successors = [Successor(image_id=r.image_id, label=r.class_label, status=r.status,
                            old_id=r.old_id, old_label=r.old_label, why=why[(r.old_label, r.class_label)])
                  for r in pairs.itertuples(index=False) if r.image_id not in own]
    carried = carried_events(successors, history=history[history["image_id"].isin(set(pairs["old_id"]))],
                             labels=labels, source=f"build:{build_id}", at=at, follow=follow)
    cat.append_label_events(ds.name, carried.events)
    followed, stranded = follow_classes(cat, ds, follow, split, why, build_id=build_id, at=at)
    # A label edited in the source: the same file, its old label still a class (no class renamed, merged or split).
    edited = frozenset(r.old_id for r in pairs.itertuples(index=False)
                       if r.origin == r.old_origin and r.old_label != r.class_label and r.old_label in labels)
    return CarryOver(images=len(pairs), kept_split=kept_split, moved_split=len(moved), edited=edited,
                     source_name=ds.labels_csv.name if ds.labels_csv is not None else "labels.csv",
                     given_by="imagefolder" if ds.imagefolder is not None else "labels_csv",
                     decisions=carried.carried, lost=carried.lost,
                     changes=tuple(dict.fromkeys(why[p] for p in sorted(set(why)))), followed=followed,
                     stranded=stranded, dataset=ds.name, agreed=carried.agreed)


def successors_now(cat: Catalog, ds: Dataset, image_ids: Iterable[str], gone: Iterable[str]) -> "pandas.DataFrame":
    """Where the pictures of items set aside since (their source removed: a class renamed, merged or split) are
    now, by the same pairing a build's carry-over uses (:meth:`Catalog.set_aside_matches`,
    :func:`pair_successors`): for the set-aside items among ``image_ids`` and those of the classes ``gone``,
    one row per item whose picture an item of today succeeds — old_id, old_label, image_id (the successor),
    class_label (its class). An item succeeded by one that was itself set aside since (a class renamed twice)
    has the row of the item today that succeeded that one. For a mislabel run's flags (:func:`dsbuild.cycle.run_flags_now`)."""
    import pandas as pd

    columns = ["old_id", "old_label", "image_id", "class_label"]
    old = cat.set_aside_among(ds.name, reason=SOURCE_REMOVED, image_ids=list(image_ids), labels=list(gone))
    if not old:
        return pd.DataFrame(columns=columns)
    live = cat.same_content_items(ds.name, old, except_reason=SOURCE_REMOVED)
    matches = cat.set_aside_matches(ds.name, live, reason=SOURCE_REMOVED) if live else None
    if matches is None or matches.empty:
        return pd.DataFrame(columns=columns)
    pairs = pair_successors(matches, earlier=True)
    return pairs.loc[pairs["old_id"].isin(set(old)), columns].reset_index(drop=True)


def successor_classes(why: dict[tuple[str, str], str], labels: set[str]) -> tuple[dict[str, str], set[str]]:
    """From a build's class changes (:func:`class_changes`): ``follow``, each class that is gone and whose
    images all went to one class (renamed or merged into it) → that class; ``split``, the classes that are gone
    and whose images went to several (which part an image relabelled to it belongs to cannot be told)."""
    out_of: dict[str, set[str]] = {}
    for old, new in why:
        out_of.setdefault(old, set()).add(new)
    follow = {old: next(iter(new)) for old, new in out_of.items() if old not in labels and len(new) == 1}
    split = {old for old, new in out_of.items() if old not in labels and len(new) > 1}
    return follow, split


def follow_classes(cat: Catalog, ds: Dataset, follow: dict[str, str], split: set[str], why: dict[tuple[str, str], str],
                   *, build_id: int, at: datetime) -> tuple[dict[tuple[str, str], int], dict[str, tuple[str, ...]]]:
    """Images relabelled in review to a class that is gone, still under their own class (they did not move, so
    nothing was carried to them): to a class renamed or merged into another (``follow``), a ``relabel`` event to
    it (source ``build:<id>``, noted with the change: ``class 'two' renamed 'deux'``; undo takes it back; a
    removed image stays removed); to a class split (``split``), nothing — they are returned, to be named.
    Returns (gone, new) → images relabelled, and split class → their image_ids."""
    gone = sorted(set(follow) | split)
    if not gone:
        return {}, {}
    rows = cat.relabelled_to(ds.name, gone, except_reason=SOURCE_REMOVED)
    if rows.empty:
        return {}, {}
    history = cat.label_history(ds.name, image_ids=list(rows["image_id"]))
    latest = history.drop_duplicates("image_id", keep="last").set_index("image_id")["new_status"]
    events, followed, stranded = [], {}, {}
    for r in rows.itertuples(index=False):
        if r.label in follow:
            new = follow[r.label]
            words = why.get((r.label, new), f"class '{r.label}' now '{new}'")
            status = latest.get(r.image_id)
            events.append({"image_id": r.image_id, "action": "relabel", "old_label": r.label, "new_label": new,
                           "old_status": r.status, "new_status": status if isinstance(status, str) else None,
                           "source": f"build:{build_id}", "at": at, "note": words})
            followed[(r.label, new)] = followed.get((r.label, new), 0) + 1
        else:
            stranded.setdefault(r.label, []).append(r.image_id)
    cat.append_label_events(ds.name, events)
    return followed, {k: tuple(v) for k, v in stranded.items()}


def pair_successors(matches: "pandas.DataFrame", *, earlier: bool = False) -> "pandas.DataFrame":
    """One set-aside item per new item from :meth:`Catalog.set_aside_matches` rows (ordered by new item, latest
    set aside first), none given to two new items (module doc):

    1. the same origin: the latest set aside (it carries what came before it);
    2. else, among the items of one content (sha256), the same file name: when exactly one new item of that
       content has the name, it takes the latest set-aside item with it (the others of that name were before it);
    3. else, when one new item and one set-aside item of that content are left (of those the latest build set
       aside: earlier ones were succeeded by them), they are paired (the file was renamed too). Several left
       (copies of one picture whose names changed): none is paired.

    ``earlier``: also the rows of the items each paired one succeeded — set aside by earlier builds, of the same
    origin (1.), the same file name (2.) or of the one content left (3.): a class renamed twice (``seven`` →
    ``sept`` → ``siete``) pairs the ``siete`` item with its ``sept`` one, and with ``earlier`` with its ``seven``
    one too (a build carries decisions one step at a time; a mislabel run's flags name the items it scored).
    """
    import os

    same_all = matches[matches["origin"] == matches["old_origin"]]
    same = same_all.drop_duplicates("image_id", keep="first")
    taken = set(same["image_id"]) | set(same["old_id"])
    before = [same_all[~same_all.index.isin(same.index)]] if earlier else []
    rest = matches[(matches["origin"] != matches["old_origin"]) & ~matches["image_id"].isin(taken)
                   & ~matches["old_id"].isin(taken)]
    chosen = [same]
    for _, group in rest.groupby("sha256", sort=True):
        news = sorted(set(group["image_id"]))
        olds = group.drop_duplicates("old_id")  # latest set aside first
        origin = dict(zip(group["image_id"], group["origin"]))
        name = {iid: os.path.basename(str(o)) for iid, o in origin.items()}
        old_name = {r.old_id: os.path.basename(str(r.old_origin)) for r in olds.itertuples(index=False)}
        names = [name[i] for i in news]
        paired: dict[str, str] = {}
        used: set[str] = set()
        succeeded: set[tuple[str, str]] = set()
        for iid in news:
            if names.count(name[iid]) != 1:
                continue
            same_name = [o for o in olds["old_id"] if old_name[o] == name[iid]]
            if same_name:
                paired[iid] = same_name[0]
                used.update(same_name)
                succeeded.update((iid, o) for o in same_name[1:])
        left_new = [i for i in news if i not in paired]
        rest_old = olds[~olds["old_id"].isin(used)]
        # of those set aside last: an item set aside before was succeeded by them (the folder renamed twice)
        last = rest_old["old_build"] == rest_old["old_build"].max()
        left_old = list(rest_old.loc[last, "old_id"]) if len(rest_old) else []
        if len(left_new) == 1 and len(left_old) == 1:
            paired[left_new[0]] = left_old[0]
            succeeded.update((left_new[0], o) for o in rest_old.loc[~last, "old_id"])
        if paired:
            keys = set(paired.items())
            chosen.append(group[[(i, o) in keys for i, o in zip(group["image_id"], group["old_id"])]])
        if earlier and succeeded:
            before.append(group[[(i, o) in succeeded for i, o in zip(group["image_id"], group["old_id"])]])
    import pandas as pd

    return pd.concat(chosen + before).sort_values("image_id", kind="stable").reset_index(drop=True)


def class_changes(pairs: list[tuple[str, str]], labels: set[str], labels_before: set[str], *,
                  moved: set[tuple[str, str]] = frozenset(), folders: bool = False) -> dict[tuple[str, str], str]:
    """(old label, new label) → the class change in words, from every such pair of a build's successors
    (``labels``: the classes now; ``labels_before``: those before the build; ``moved``: the pairs whose files
    all came from another place; ``folders``: the classes are an ``imagefolder``'s subfolders):
    ``class folder 'ship' renamed 'boat'`` (an imagefolder's class renamed), ``class 'boat' moved to another
    folder`` (same class, its files elsewhere), ``class 'ship' renamed 'boat' and moved to another folder``,
    ``class 'ship' split into 'ship_a', 'ship_b'`` (its images went to several classes and it is gone),
    ``classes 'dog', 'horse' merged into 'animal'`` (a class took images of several, or of one while it
    existed before: ``class 'cat' merged into 'dog'``), ``class 'cat' renamed 'kitty'`` (one to one, the old
    one gone), ``images of the former class 'cat' back under 'kitty'`` (a class gone before this build, its set-aside
    images back under a class that was there), else ``images of class 'a' now under 'b'``."""
    into: dict[str, set[str]] = {}
    out_of: dict[str, set[str]] = {}
    for old, new in pairs:
        into.setdefault(new, set()).add(old)
        out_of.setdefault(old, set()).add(new)

    def quoted(names: Iterable[str]) -> str:
        return ", ".join(f"'{n}'" for n in sorted(names))

    words = {}
    for old, new in set(pairs):
        if old == new:
            words[(old, new)] = f"class '{old}' moved to another folder"
        elif len(out_of[old]) > 1 and old not in labels:
            words[(old, new)] = f"class '{old}' split into {quoted(out_of[old])}"
        elif old not in labels_before and old not in labels and len(into[new]) == 1 and new in labels_before:
            # A class renamed or merged by an earlier build whose set-aside images come back now (trial 6: "class
            # 'cat' merged into 'kitty'" for two URLs put back after the rename cat → kitty)
            words[(old, new)] = f"images of the former class '{old}' back under '{new}'"
        elif (len(into[new]) > 1 or new in labels_before) and old not in labels:  # a class still here: no merge
            which = f"classes {quoted(into[new])}" if len(into[new]) > 1 else f"class '{old}'"
            words[(old, new)] = f"{which} merged into '{new}'"
        elif old not in labels:
            if (old, new) in moved and folders:
                words[(old, new)] = f"class folder '{old}' renamed '{new}'"
            elif (old, new) in moved:
                words[(old, new)] = f"class '{old}' renamed '{new}' and moved to another folder"
            else:
                words[(old, new)] = f"class '{old}' renamed '{new}'"
        else:
            words[(old, new)] = f"images of class '{old}' now under '{new}'"
    return words
