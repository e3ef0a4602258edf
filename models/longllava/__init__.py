"""LongLLaVA: a Jamba hybrid language model, a CLIP vision tower and a 2D-pooling projector.

Nothing heavy is imported here: :mod:`models.longllava.configuration`, :mod:`models.longllava.modeling`
and :mod:`models.longllava.processing` import transformers when they are imported themselves.
"""
