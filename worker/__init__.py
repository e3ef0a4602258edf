"""pacs-vlm's worker side: the Celery app, its tasks and the command line that ties all parts together."""
