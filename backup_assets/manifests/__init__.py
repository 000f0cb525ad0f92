"""Manifests shipped with the project: ``builtin.json`` (derived from Sentry's ``detailed.json`` by
:mod:`.derive`) and the model lists of named subsets of it (``<name>.txt``, one model a line)."""
