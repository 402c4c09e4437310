"""The CAPO application: the ``capo`` command, recipes, run reports, data, evaluation, the tiny model, studies.

It imports the library :mod:`capo` and is never imported by it (docs/design.md §1).
"""
