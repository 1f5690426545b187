"""The real-process test harness, shared by tests/ and bench/ (installed with the project).

  settings  the one copy of the settings tests and benchmarks run the game with
  client    the one websocket client: a player that loads a page for its cookie
  servers   gunicorn as the Procfile runs it, and seeding today's puzzles
  faults    fault scenarios on real processes (redis-server or a web process killed -9)
  fuzzing   hypothesis strategies for the websocket protocol and every HTTP endpoint

It lives outside tests/ so that bench/ imports it like any installed package
(pyproject's packages.find includes it) instead of putting tests/ on sys.path.
Nothing in engine/ or game/ imports it.
"""
