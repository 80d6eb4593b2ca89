"""The dashboard: server-rendered pages and a JSON API over the fleet's Redis counters
and PostgreSQL rows, served by ``fleettrace dashboard`` or a worker's ``--http`` with
``--dashboard`` (docs/dashboard.md).

- :mod:`.app` puts the ASGI application together (probes, pages, API, assets);
- :mod:`.access` says who may see it and how a change proves it came from a page;
- :mod:`.queries` checks query strings and reads; :mod:`.api` and :mod:`.pages`
  answer with JSON and HTML.
"""
