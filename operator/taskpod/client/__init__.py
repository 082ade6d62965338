"""What a user does from outside the cluster: task operations and the kubectl-task plugin."""
