"""taskpod: run AI coding-agent tasks on Kubernetes."""

__version__ = "0.1.0"
