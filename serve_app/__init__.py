"""The prediction API on Ray Serve (``serve_app.app:app``)."""

import tasador  # noqa: F401  (Ray's auth mode, set before Ray is imported: tasador/__init__.py)
