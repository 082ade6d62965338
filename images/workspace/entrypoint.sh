#!/bin/sh
# The workspace container's command: AgentAPI serving Claude Code on $AGENTAPI_PORT (default 3284).
# Arguments given to the container (the template's pod.args) are passed on to `claude`.
set -eu

# --allowed-hosts '*': the operator reaches the agent by pod IP, which agentapi's default (localhost
# only) refuses with HTTP 400.
port="${AGENTAPI_PORT:-3284}"
# Claude Code's permission prompts would stall a task that has no human to answer them: the pod is the
# sandbox, so it runs with bypassPermissions unless CLAUDE_PERMISSION_MODE says otherwise (or the
# template's args give --permission-mode, which comes later and wins).
mode="${CLAUDE_PERMISSION_MODE:-bypassPermissions}"
state_file="${TASKPOD_STATE_FILE:-/workspace/.taskpod/agentapi-state.json}"

# --state-file keeps AgentAPI's conversation on the workspace volume across restarts (a pause, a
# rescheduled pod). agentapi v0.11.8, the pinned release, has no such flag: with it, after a restart
# GET /messages starts again from the new terminal screen, so `kubectl task logs` shows only what was
# said since (the last snapshot ConfigMap still holds the earlier messages). Claude Code's own session
# files stay in $HOME/.claude on the volume either way. Passed only when the binary knows the flag.
#
# Conversation continuity: Claude Code keeps each session under $HOME/.claude/projects/<its directory, each
# character other than a letter or digit made "-">/<id>.jsonl, on the volume. A start that finds one for
# this directory (a resume, a replaced pod) continues the latest (`claude --continue`): the agent carries
# on the same conversation, earlier turns included. The first start, or TASKPOD_CONTINUE=false, begins a
# new one. (--continue with no session to continue would end claude at once, so it is never guessed.)
sessions="$HOME/.claude/projects/$(pwd | sed 's/[^A-Za-z0-9]/-/g')"
if [ "${TASKPOD_CONTINUE:-true}" = true ] && ls "$sessions"/*.jsonl > /dev/null 2>&1; then
    set -- --continue "$@"
fi
if agentapi server --help 2>/dev/null | grep -q -e '--state-file'; then
    mkdir -p "$(dirname "$state_file")"
    set -- --state-file "$state_file" -- claude --permission-mode "$mode" "$@"
else
    set -- -- claude --permission-mode "$mode" "$@"
fi
# A task with a repository reports its checkout's git state to the operator, beside the agent.
if [ -n "${TASKPOD_CHECKOUT:-}" ] && [ -n "${TASKPOD_REPORT_URL:-}" ] && command -v taskpod-git-state >/dev/null; then
    taskpod-git-state watch &
fi
# What Claude Code would ask a human at its first start, answered (see settle-claude.mjs).
node "${TASKPOD_SETTLE_CLAUDE:-/usr/local/lib/taskpod/settle-claude.mjs}"
exec agentapi server --type claude --port "$port" --allowed-hosts '*' "$@"
