"""The Task and TaskTemplate API: pydantic models held to crds/ by a test."""
