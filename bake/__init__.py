"""steerbake's pipeline up to a baked model: vectors, plan, hooks, bake, verify."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("steerbake")
except PackageNotFoundError:  # running from a checkout without installing
    __version__ = "0.0.0+unknown"
