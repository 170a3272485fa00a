"""Training of the Neuro Radix models on CT-RATE: segmentation backbone, embedding export,
multitask head, evaluation (see docs/training.md). ``cli.register`` adds the subcommands."""
