"""Hypothesis settings of the triage tests: no example database in the working tree, no deadline
(the 2-core CI machine is shared), and a fixed number of examples per property. (Hypothesis still caches constants under
``.hypothesis/``, which .gitignore lists.)"""

from hypothesis import settings

settings.register_profile("neuroradix", database=None, deadline=None, max_examples=150)
settings.load_profile("neuroradix")
