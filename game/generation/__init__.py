"""Generation: the job queue, the worker's heartbeats, the generation service and the worker process.

`jobs` is the Redis stream of generation jobs; `heartbeats` what live workers
report (read by the web pages and the CLI without importing the worker loop);
`service` the plain functions that turn a job into a target; `worker` the
long-lived process (`python -m game.generation.worker`) that runs them.
"""
