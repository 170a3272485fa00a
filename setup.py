"""What pyproject.toml cannot say alone: the package folders come from three roots.

``inference/neuroradix`` and ``training/neuroradix_train`` are found with their sub-packages; the
Orthanc plugin (``plugin/`` at the top, a separate stdlib-only program) ships as the package
``neuroradix_plugin`` with ``orthanc.json`` beside it (``plugin/orthanc.json`` is a link to the one
file at the top), so an installed node finds both through ``importlib.resources``. Everything else
is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

ROOTS = {"neuroradix": "inference/neuroradix", "neuroradix_train": "training/neuroradix_train"}

packages = ["neuroradix_plugin"]
for name, folder in ROOTS.items():
    found = find_namespace_packages(folder, exclude=["__pycache__", "*.__pycache__"])  # data folders too, as before
    packages += [name, *(f"{name}.{sub}" for sub in found)]

setup(packages=packages, package_dir={**ROOTS, "neuroradix_plugin": "plugin"})
