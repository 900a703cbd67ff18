"""Ray job entrypoints: ``python -m jobs.<name> --group N --day D``. Each prints one JSON object
as its last line (what it did, with counts and ids) and exits non-zero when it failed."""
