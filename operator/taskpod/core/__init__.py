"""The pure core: decisions and desired objects from observations, tested by tables (naming also asks
Anthropic, when a key is set)."""
