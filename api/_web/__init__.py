"""The web dashboard: pages served by the API's own app under ``/ui/``.

Pages are server-rendered shells (Jinja2) that name only what the caller may see; their
scripts fetch every figure from the REST API under ``/api/v1`` with the session cookie, so the
dashboard has exactly the API's roles and grants. ``_sessions`` exchanges an API token for the
cookie; ``_pages`` holds the routes; ``static/`` every script, style and font (no CDN).
"""
