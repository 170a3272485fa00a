"""Deep-learning models of the node: SwinUNETR backbone, patch embeddings, multitask head with BART.

Modules: ``config`` (typed configuration), ``transforms`` (preprocessing and MONAI-style
transforms shared with training), ``backbone``, ``attention`` (fused window attention),
``speed`` (``sw_batch`` choice, compiled backbone), ``sliding`` (sliding-window segmentation +
embeddings), ``embeddings`` (stage-2 files), ``bridge`` / ``moe`` / ``head`` (multitask head),
``decode`` (static-cache greedy decoding), ``tokenizer``, ``findings`` and ``remap`` (data
files), ``cli`` (``neuroradix weights ...``).
Import the submodules directly; this package imports nothing heavy on its own.
"""
