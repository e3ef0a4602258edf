"""The review API process (``pacs-vlm api``): FastAPI application, health checks and Prometheus metrics.

Build the application with :func:`integration.web.app.create_app`; nothing here runs at import time.
"""
