"""The daemon's web side: the JSON API and the HTML pages (templates, static)."""
