"""render/: every output dsbuild shows or writes — terminal tables, console summaries, HTML, figures.

==============  ==================================================================
tables.py       :func:`render_table`: ``--format table|csv|json`` and ``--out``
console.py      rich progress bars and the CLI's summaries (build, status, runs)
html.py         the mislabel report and the duplicate groups page (self-contained)
figures.py      confusion matrix and top-losses PNGs (matplotlib Agg)
thumbs.py       JPEG ``data:`` thumbnails for the HTML pages
values.py       what counts as missing; JSON-ready cell values
==============  ==================================================================
"""
