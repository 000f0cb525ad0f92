"""The ``dg`` defs folder of this repository: each subfolder's ``defs.yaml`` instantiates a component."""
