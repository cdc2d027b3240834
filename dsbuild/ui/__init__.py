"""ui/: ``dsbuild ui``, a local web app to review flagged images, browse the catalog, read runs and predict.

==============  ==================================================================
server.py       bind (loopback unless --allow-remote), print the URL with its token, run uvicorn
app.py          the Starlette routes and pages (jinja2 templates, autoescape on)
security.py     the guard every request passes: Host, token/cookie, CSRF, methods, headers (CSP)
thumbs.py       thumbnails made once per stored image, cached beside the store, served by image id
templates/      the pages; static/: app.js and app.css (no inline script, no CDN, no build step)
==============  ==================================================================

Decisions go through :func:`dsbuild.cycle.review_dataset` (``source="ui"``), the same
function as ``dsbuild review``: each is an append-only label event the moment it is made.
Reads go through :mod:`dsbuild.catalog.app_queries`.
"""
