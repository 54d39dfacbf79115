"""The web console: static HTML, CSS and JavaScript modules, served by the daemon at `/ui/`.

No Python here and no build step: the files are package data, written for this
project (no third-party or generated code), and `eventstreamd/daemon/console.py`
serves them. The scripts are ES modules, one per page or concern (see the
comment at the top of each); they talk to the daemon's API and `GET /status`
with the API token, and build every page from elements and text, never from
markup strings (the served Content-Security-Policy enforces it with Trusted
Types).
"""
