"""``python -m worker.cli``: the same command line as the ``pacs-vlm`` script."""

from worker.cli import app

app()
