"""The medical vision-language models: family registry, prompts and backends.

torch and transformers are imported only inside this package's backends.
"""
