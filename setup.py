"""Only the optional native kernel lives here; everything else is in pyproject.toml."""

from setuptools import Extension, setup

# optional: without a C compiler the install still succeeds and similarity.py uses numpy instead.
setup(ext_modules=[Extension("selfinstruct._overlap", ["selfinstruct/_overlap.c"], optional=True)])
