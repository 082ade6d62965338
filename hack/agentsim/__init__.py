"""agentsim: the workspace simulator of taskpod's test control plane.

`agentsim.agent.ScriptedAgent` speaks AgentAPI's HTTP API with scripted behaviour and faults;
`agentsim.simulator.Simulator` plays one at the IP of every Running workspace pod (kwok gives pods
loopback IPs), like a kubelet would run the agent container. `python -m agentsim --help` runs it.
"""
