"""A stand-in for the Anthropic Messages API, scripted per test (see server.py)."""
