"""Deep-learning models of the node: SwinUNETR backbone, patch embeddings, multitask head with BART.

Modules: ``config`` (typed configuration), ``transforms`` (preprocessing and MONAI-style
transforms shared with training), ``backbone``, ``sliding`` (sliding-window segmentation +
embeddings), ``embeddings`` (stage-2 files), ``bridge`` / ``moe`` / ``head`` (multitask head),
``tokenizer``, ``findings`` and ``remap`` (data files), ``cli`` (``neuroradix weights ...``).
Import the submodules directly; this package imports nothing heavy on its own.
"""
