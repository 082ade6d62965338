"""The operator's imperative shell: Kopf wiring, the work queue, the reconcile, agent followers,
leader election, metrics, the report endpoint and the settings."""
