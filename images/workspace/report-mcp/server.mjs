// The agent's report tool (Coder's report_task): an MCP server on stdio that Claude Code starts, with one
// tool, `report_task`, which posts the agent's own state to the taskpod operator.
//
// The operator's report endpoint ($TASKPOD_REPORT_URL) takes {"state", "message", "uri"} with a
// ServiceAccount token bound to this pod ($TASKPOD_REPORT_TOKEN_FILE, re-read for every report: the kubelet
// rotates it). Only the agent can say that its task is complete or has failed; working and idle are also
// accepted, though the operator's watch of the agent's screen overrides those two. With the task's
// repository.push, `complete` first pushes the working branch (git-state.mjs push), and says how it went.
import { execFile } from "node:child_process";
import fs from "node:fs/promises";
import { pathToFileURL } from "node:url";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { z } from "zod";

const STATES = ["complete", "failed", "working", "idle"];
const MAX_MESSAGE = 1024; // the operator keeps no more
const ATTEMPTS = 5; // for answers that say "try again": 503, or no answer at all
const TIMEOUT_MS = Number(process.env.TASKPOD_REPORT_TIMEOUT_MS || 10_000);
const BACKOFF_MS = Number(process.env.TASKPOD_REPORT_BACKOFF_MS || 1_000);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** One POST of the report; "retry" when the operator cannot take it now. */
async function post(url, token, body) {
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
  } catch (error) {
    return { retry: true, error: `cannot reach the operator at ${url}: ${error.cause?.code ?? error.message}` };
  }
  const text = await response.text();
  let answer = {};
  try {
    answer = JSON.parse(text);
  } catch {
    answer = { error: text.slice(0, 200) };
  }
  if (response.ok) return { ok: true };
  return { retry: response.status === 503, error: `the operator refused the report (HTTP ${response.status}): ${answer.error ?? ""}` };
}

export async function report({ state, message, link }, env = process.env) {
  const url = env.TASKPOD_REPORT_URL;
  const tokenFile = env.TASKPOD_REPORT_TOKEN_FILE || "/var/run/taskpod/token";
  if (!url) return { ok: false, error: "this workspace has no report endpoint (TASKPOD_REPORT_URL is not set)" };
  // Cut by characters, not UTF-16 units, so that no emoji is split into a lone surrogate.
  const body = { state, message: Array.from(message).slice(0, MAX_MESSAGE).join(""), uri: link || null };
  let last;
  for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
    let token;
    try {
      token = (await fs.readFile(tokenFile, "utf8")).trim();
    } catch (error) {
      return { ok: false, error: `cannot read the pod's report token ${tokenFile}: ${error.code ?? error.message}` };
    }
    last = await post(url, token, body);
    if (!last.retry) break;
    if (attempt < ATTEMPTS) await sleep(BACKOFF_MS * 2 ** (attempt - 1));
  }
  return last.ok ? { ok: true } : { ok: false, error: last.error };
}

/** With repository.push, a complete task's branch is pushed before it is reported (git-state.mjs push). */
export function pushBranch(env = process.env) {
  const command = env.TASKPOD_GIT_STATE || "taskpod-git-state";
  return new Promise((resolve) => {
    execFile(command, ["push"], { env, timeout: 150_000 }, (error, stdout, stderr) => {
      resolve(error ? { ok: false, said: (stderr || error.message).trim() } : { ok: true, said: stdout.trim() });
    });
  });
}

export function server(env = process.env) {
  const mcp = new McpServer({ name: "taskpod", version: "0.1.0" });
  mcp.registerTool(
    "report_task",
    {
      title: "Report the task's state",
      description:
        "Tell the person who gave you this task how it stands. Call it with state `complete` and a one-line " +
        "summary when you have finished the task, or `failed` with the reason when you cannot finish it. " +
        "`link` is where the result can be seen, such as a pull request's URL. You may also report `working` " +
        "with what you are doing now.",
      inputSchema: {
        state: z.enum(STATES).describe("complete, failed, working or idle"),
        message: z.string().min(1).describe("a one-line summary for the person who gave you the task"),
        link: z.string().optional().describe("where the result can be seen, such as a pull request's URL"),
      },
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      // Never deferred behind Claude Code's tool search, however the server is registered.
      _meta: { "anthropic/alwaysLoad": true },
    },
    async (args) => {
      const pushed = args.state === "complete" && env.TASKPOD_PUSH === "true" ? await pushBranch(env) : null;
      const outcome = await report(args, env);
      const push = pushed === null ? "" : pushed.ok ? ` The branch is ${pushed.said}.` : ` ${pushed.said}`;
      return outcome.ok
        ? { content: [{ type: "text", text: `Reported ${args.state}.${push}` }] }
        : { content: [{ type: "text", text: outcome.error + push }], isError: true };
    },
  );
  return mcp;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await server().connect(new StdioServerTransport());
}
