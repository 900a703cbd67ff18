"""Tasador: the domain core shared by every component (settings, schema, DB, data API client).

Ray reads ``RAY_AUTH_MODE`` once per process, when it is first imported, and every Ray cluster
Tasador starts or joins uses token auth: the mode is set here, so that any process importing one of
Tasador's modules (all of them import this package first) talks to its clusters, whenever it imports
Ray. A script that imports Ray before anything of Tasador's sets ``RAY_AUTH_MODE=token`` itself.
"""

import os

os.environ.setdefault("RAY_AUTH_MODE", "token")
