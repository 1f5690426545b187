"""`python -m game.cli models ...`: the models commands without building the game app."""
from game.cli import standalone

standalone()
