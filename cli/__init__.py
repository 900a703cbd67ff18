"""The ``tasador`` command (``cli/main.py``) and the demo it runs (``cli/demo.py``): thin entrypoints over
the local stack (``cluster/``) and the pipeline (``tasador/``)."""
