// What Claude Code asks a human at its first start, settled in $HOME/.claude.json before it starts: a task
// has no human to answer. Found by running the image for real (tests/integration/test_real_node.py):
// - onboarding: a theme, then a check that api.anthropic.com answers, which fails wherever the model is
//   reached some other way (ANTHROPIC_BASE_URL), and Claude Code exits;
// - whether to use the ANTHROPIC_API_KEY it found (remembered by the key's last 20 characters);
// - whether to trust the working folder;
// - the warning before bypassPermissions mode, which the entrypoint starts it in.
// It also registers the report tool (report-mcp/server.mjs) as the user's MCP server "taskpod", so the agent
// has `report_task` with no setup: at user scope, which Claude Code does not ask a human to approve, and
// only while the pod has a report endpoint. Claude Code gives an MCP server only the environment its entry
// names, so the entry carries the endpoint and the token's path.
// Everything else in the file (its projects, history, sessions) is kept; a file that is not JSON is kept
// beside it, not lost.
import fs from "node:fs";
import path from "node:path";

const file = path.join(process.env.HOME || "/workspace", ".claude.json");
let config = {};
try {
  config = JSON.parse(fs.readFileSync(file, "utf8"));
  if (config === null || typeof config !== "object" || Array.isArray(config)) throw new Error("not an object");
} catch (error) {
  if (error.code !== "ENOENT") {
    const aside = `${file}.unreadable-${Date.now()}`;
    fs.renameSync(file, aside);
    console.error(`taskpod: ${file} was unreadable (${error.message}); kept as ${aside}`);
  }
  config = {};
}
config.hasCompletedOnboarding = true;
config.bypassPermissionsModeAccepted = true;
const key = process.env.ANTHROPIC_API_KEY;
if (key) {
  const responses = (config.customApiKeyResponses ??= {});
  const tail = key.slice(-20);
  responses.approved = [...new Set([...(responses.approved ?? []), tail])];
  responses.rejected = (responses.rejected ?? []).filter((k) => k !== tail);
}
const project = ((config.projects ??= {})[process.cwd()] ??= {});
project.hasTrustDialogAccepted = true;
project.hasCompletedProjectOnboarding = true;
// With repository.push, the report tool pushes on `complete`: it needs the checkout and git's credential
// settings (workspace.credentials_env), which Claude Code would not pass on.
function pushEnv() {
  const names = ["PATH", "HOME", "TASKPOD_PUSH", "TASKPOD_CHECKOUT", "TASKPOD_GIT_CREDENTIALS", "GIT_SSH_COMMAND"];
  const wanted = ([name]) => names.includes(name) || name.startsWith("GIT_CONFIG_");
  return Object.fromEntries(Object.entries(process.env).filter(wanted));
}
const servers = (config.mcpServers ??= {});
const { TASKPOD_REPORT_URL, TASKPOD_REPORT_TOKEN_FILE } = process.env;
if (TASKPOD_REPORT_URL) {
  servers.taskpod = {
    type: "stdio",
    // Claude Code 2.1 defers MCP tools behind its tool search by default: the model would have to look
    // report_task up before it knew its arguments. Always loaded, it is in every request, and Claude Code
    // waits for the server at start-up.
    alwaysLoad: true,
    command: process.execPath,
    args: [process.env.TASKPOD_REPORT_MCP || "/usr/local/lib/taskpod/report-mcp/server.mjs"],
    env: {
      TASKPOD_REPORT_URL,
      TASKPOD_REPORT_TOKEN_FILE: TASKPOD_REPORT_TOKEN_FILE || "/var/run/taskpod/token",
      ...(process.env.TASKPOD_PUSH === "true" ? pushEnv() : {}),
    },
  };
} else {
  delete servers.taskpod;
}
const temporary = `${file}.taskpod-${process.pid}`;
fs.writeFileSync(temporary, JSON.stringify(config, null, 2), { mode: 0o600 });
fs.renameSync(temporary, file);
