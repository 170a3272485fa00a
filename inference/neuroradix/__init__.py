"""Neuro Radix: a chest-CT AI node for Orthanc / DICOMweb."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("neuroradix")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"

MANUFACTURER = "Neuro Radix"
