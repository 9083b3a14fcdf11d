"""The REST API (FastAPI), a thin layer over the store and the twin."""
