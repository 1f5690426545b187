"""Tests of the game in-process (game/): store, service, pages, websocket, CLI and worker, on real Redis."""
