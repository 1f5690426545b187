"""Captionary's tests, grouped so the folder says what a test exercises.

  engine/   the engine library (CLIP, the scorer, VQGAN, generation, weights, prompts)
  game/     the game in-process: store, service, pages, websocket, CLI, worker, on real Redis
  system/   real processes: gunicorn from the Procfile, faults (kill -9), fuzzing and
            hardening, headless Chromium, the GPU
  helpers/  in-process fixtures and data (tests/conftest.py registers the web fixtures)

test_architecture.py, at the top, checks the import layers of engine/ and game/.
The real-process harness the system tests share with bench/ is the top-level
harness package. The folders are packages (tests.game.test_ws, ...) so that a
test file name may repeat across folders.
"""
