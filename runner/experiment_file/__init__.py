"""The experiment file: JSON read and validated into frozen dataclasses.

- ``spec``: the file's sections, parsed with errors that name the JSON path.
- ``typed``: the dataclass builder those errors come from.
- ``space``: search spaces: parameters, scales, sampling and grids.
- ``limits``: how big an experiment may get, checked before anything runs.
- ``schema``: the JSON Schema for editors (``runner schema``).
"""
