"""Tests of the engine library (engine/): CLIP loading, the scorer, VQGAN, generation, weights, prompts."""
