"""The bad-input corpus: studies of many kinds, each with the outcome the node must reach (``generate.py``)."""
