"""`python -m game.cli models|redis ...`: the models and redis commands without building the game app."""
from game.cli import standalone

standalone()
