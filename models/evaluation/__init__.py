"""Evaluation of a model: VQA sets (VQA-RAD, SLAKE, PathVQA layouts) and draft-vs-reference report pairs.

:mod:`~models.evaluation.datasets` reads the files, :mod:`~models.evaluation.metrics` holds the
pure scoring functions and :mod:`~models.evaluation.runner` sends the items through a backend in
batches.  The command line is ``pacs-vlm eval`` (``worker/cli_eval.py``).
"""
