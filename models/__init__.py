"""The medical vision-language models: family registry, prompts and backends.

- ``backend``: requests, results, model identity, the backend protocol and ``ModelNotStaged``.
- ``registry``: the supported families and recognising a checkpoint from its ``config.json``.
- ``checkpoint`` and ``fingerprint``: cheap completeness checks of a staged directory, its identity.
- ``processors``, ``images`` and ``chat_templates``: preparing prompts and images for a checkpoint.
- ``transformers_backend``: the in-process backend (transformers, lazily loaded, batched, greedy).
- ``smoke`` and ``smoke_vocabulary``: tiny randomly initialised checkpoints for tests and the demo.
- ``prompts`` and ``draft``: what the model is asked, and parsing what it answers.
- ``draft_schema``, ``constrained``, ``token_logprobs`` and ``confidence``: the draft's JSON schema, decoding
  bound to it in process (xgrammar), the answer's token log-probabilities and texts, per-finding confidence.

Importing any of these imports neither torch nor transformers; the backends and the smoke-model
builder import them when they first load or build a model.
"""
