"""Captionary's ML engine: CLIP loading and scoring, VQGAN adapter, generation.

A library with no web code: nothing under engine/ imports Flask or the game.
"""
