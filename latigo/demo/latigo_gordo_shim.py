"""Inert stand-ins for TensorFlow, Keras, SciKeras and absl inside the local Gordo virtualenv.

gordo imports these at import time even when it only serves scikit-learn models; the light
install leaves them out (2 GB less), so this finder answers those imports with placeholders.
Only scikit-learn models can be built and served with it; anything that really uses one of
these packages gets a placeholder class that does nothing.

``latigo.demo.gordo.ensure_venv`` copies this file into the Gordo virtualenv's
site-packages and imports it from a ``.pth`` file there, so every interpreter of that
virtualenv (the builder, gunicorn's master and workers) has it before gordo is imported.
Real installs of these packages are never shadowed: the finder is appended to
``sys.meta_path``, after the normal path finder.
"""

import abc
import importlib.abc
import importlib.machinery
import sys
import types

# top-level packages answered with placeholders
SHIMMED = ("tensorflow", "keras", "scikeras", "absl")


class _PlaceholderMeta(abc.ABCMeta):
    """Metaclass of placeholders: any attribute is another placeholder; iterating yields nothing."""

    def __iter__(cls):
        return iter(())

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")


def _placeholder(name):
    """A class named ``name`` usable as a base class, decorator target, or callable that does nothing."""

    def accept(self, *args, **kwargs):
        pass

    return _PlaceholderMeta(name.rsplit(".", 1)[-1], (), {"__qualname__": name, "__init__": accept})


class _PlaceholderModule(types.ModuleType):
    """A module whose every public attribute is a (cached) placeholder class."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and loads placeholder modules for the packages in SHIMMED and their submodules."""

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".", 1)[0] in SHIMMED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.append(_Finder())
