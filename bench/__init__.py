"""`make bench`: how many tasks one operator runs, how fast, and how far from the API server's floor.

For each N: a fresh local control plane with the workspace simulator hosting every agent; the operator
applies, pauses and resumes N tasks while its CPU, memory and API requests (from the API server's audit
log) are recorded; then it sits idle; then one task is paused repeatedly. A second fresh control plane
measures the pod floor: the same volume claims and pods created, deleted and created again directly by a
minimal client, with no controller.
"""
