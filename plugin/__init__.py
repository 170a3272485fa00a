"""The Orthanc plugin of Neuro Radix: a separate program that runs inside Orthanc's embedded Python.

Stdlib only. Orthanc loads :mod:`glue` (``"PythonScript"`` in ``orthanc.json``) as a top-level
module, with this folder first on ``sys.path``; everywhere else (tests, the installed node, which
passes the files' paths to Orthanc) it is the package ``neuroradix_plugin``. This file imports
nothing (importing :mod:`glue` needs Orthanc's ``orthanc`` module), so what it offers is listed here.

Modules
-------
glue
    The only module that imports ``orthanc``: callbacks, filters, the hand-off thread's start.
handoff
    Hands stable studies to the sidecar (queue, retry, the source fingerprint).
policy
    Who may do what in the node's Orthanc (accounts' scopes, the node's own output).
"""
