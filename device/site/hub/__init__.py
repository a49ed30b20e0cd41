"""The site hub (``pip install 'edgeface[hub]'``, command ``edgeface-hub``): the master gallery, enrollment
from photos for every embedder space the doors run, signed retained person records, the site event log,
Home Assistant discovery and a small web page (FastAPI + Jinja2, served by uvicorn on 127.0.0.1).

:mod:`.store` (SQLite: people, embeddings per space, events, doors), :mod:`.service` (the MQTT side and
enrollment), :mod:`.web` (the page), :mod:`.cli` (``edgeface-hub init-site | passwd | serve``).
"""
