"""Not a package anyone imports: it names the inspector's test package ``inspector.tests``.

The inspector's tests are a package (``tests/__init__.py``: they import ``._fakes``). Under
pytest's importlib mode its conftest became ``tests.conftest``, the name of the repository's
``tests/conftest.py`` too, and collection stopped ("Plugin already registered").
"""
