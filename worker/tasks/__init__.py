"""The worker's Celery tasks; :data:`worker.celery_app.app` lists these modules in ``include``."""
