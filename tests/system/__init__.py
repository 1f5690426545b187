"""System tests on real processes: gunicorn from the Procfile, faults, fuzzing and hardening, Chromium, the GPU."""
