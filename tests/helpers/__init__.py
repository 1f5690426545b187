"""In-process test helpers: a settable clock, small images, hard captions, and the web fixtures.

  clock          Clock, the settable clock the Store takes in tests
  images         png_bytes, a small solid-colour PNG
  hard_captions  captions that stress the tokenizer and the scorer
  web            the app on test settings, seeded targets, a live server, websocket
                 clients (registered for every test by tests/conftest.py)

Real processes (gunicorn, faults, fuzzing) are in the harness package, shared with bench/.
"""
