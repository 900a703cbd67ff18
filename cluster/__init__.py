"""The local stack (``tasador up/down/status/demo``) and Ray cluster definitions."""
