"""dedup/: duplicate search and grouping over the catalog's hashes.

==============  ==================================================================
search.py       exact near-duplicate pair search over perceptual hashes
                (multi-index hashing, sub-quadratic) and connected components
grouping.py     a dataset's duplicate groups, representatives, label conflicts,
                quality flags and statuses, recomputed from the catalog each build
==============  ==================================================================

Room for another finder (e.g. embedding neighbours): it returns the same
``(i, j, distance)`` pair rows that :func:`dsbuild.dedup.grouping.regroup`
takes as ``near_pairs``.
"""
