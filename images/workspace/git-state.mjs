#!/usr/bin/env node
// The checkout's git state, reported to the operator so that the Task's status shows what the agent did:
// the branch, HEAD and the base it started from, the commits ahead of the base, and the files and lines
// changed since it (committed or not). Posted to TASKPOD_REPORT_URL + "/git" with the pod's token, as the
// agent's reports are (report-mcp/server.mjs).
//
//   taskpod-git-state watch   from the entrypoint, beside the agent: once at start, whenever the agent
//                             goes idle (AgentAPI's status turns stable), and every 30 s while it works,
//                             posting only what changed
//   taskpod-git-state once    the pod's preStop hook: the last word before a pause stops the pod
//   taskpod-git-state push    push the branch checked out to origin, under the same name, and report the
//                             state with the push's outcome (the report tool on complete, kubectl task
//                             push); exits 1 if the push failed
//
// TASKPOD_CHECKOUT is the checkout (the operator sets it with the repository). Nothing here is fatal to
// the agent: a failure is said on stderr and tried again at the next look.
import { execFileSync } from "node:child_process";
import fs from "node:fs";

const checkout = process.env.TASKPOD_CHECKOUT;
const endpoint = `${process.env.TASKPOD_REPORT_URL}/git`;
const tokenFile = process.env.TASKPOD_REPORT_TOKEN_FILE || "/var/run/taskpod/token";
const agentStatus = `http://127.0.0.1:${process.env.AGENTAPI_PORT || 3284}/status`;
const every = Number(process.env.TASKPOD_GIT_STATE_EVERY_MS || 2000); // how often the agent's status is read
const refresh = Number(process.env.TASKPOD_GIT_STATE_REFRESH_MS || 30000); // the longest between git looks

function git(...args) {
  return execFileSync("git", ["-C", checkout, ...args], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
    timeout: 60000,
  }).trim();
}

function count(text, pattern) {
  const found = text.match(pattern);
  return found ? Number(found[1]) : 0;
}

export function gitState() {
  const head = git("rev-parse", "HEAD");
  let base = null;
  try {
    base = git("rev-parse", "--verify", "--quiet", "refs/taskpod/base^{commit}");
  } catch {
    // a checkout taskpod did not make, or whose base the agent deleted: no base to compare with
  }
  const stat = base ? git("diff", "--shortstat", base) : "";
  const porcelain = git("status", "--porcelain", "--untracked-files=all");
  return {
    branch: git("branch", "--show-current") || null, // null: a detached HEAD
    head,
    base,
    ahead: base ? Number(git("rev-list", "--count", `${base}..HEAD`)) : null,
    filesChanged: count(stat, /(\d+) files? changed/),
    insertions: count(stat, /(\d+) insertions?\(\+\)/),
    deletions: count(stat, /(\d+) deletions?\(-\)/),
    uncommitted: porcelain ? porcelain.split("\n").length : 0,
  };
}

async function post(state) {
  const token = fs.readFileSync(tokenFile, "utf8").trim();
  const answer = await fetch(endpoint, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify(state),
    signal: AbortSignal.timeout(10000),
  });
  if (!answer.ok) throw new Error(`the operator answered ${answer.status}: ${(await answer.text()).trim()}`);
}

/** Git's words, last lines first in importance, with anything the mounted Secret holds taken out. */
function said(error) {
  let text = String(error.stderr || error.message || error).trim().split("\n").slice(-4).join(" ");
  const secrets = process.env.TASKPOD_GIT_CREDENTIALS;
  for (const name of ["password", "token"]) {
    try {
      const secret = fs.readFileSync(`${secrets}/${name}`, "utf8").trim();
      if (secrets && secret.length > 3) text = text.split(secret).join("[redacted]");
    } catch {
      // no such key
    }
  }
  return text.slice(0, 1024);
}

async function push() {
  let outcome;
  try {
    const branch = git("branch", "--show-current");
    if (!branch) throw new Error("HEAD is detached: there is no branch to push");
    execFileSync("git", ["-C", checkout, "-c", "credential.interactive=never", "push", "--quiet", "origin", `HEAD:refs/heads/${branch}`], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 120000,
      env: { ...process.env, GIT_TERMINAL_PROMPT: "0" },
    });
    outcome = { pushed: { branch, commit: git("rev-parse", "HEAD") } };
    console.log(`pushed ${branch} at ${outcome.pushed.commit.slice(0, 12)}`);
  } catch (error) {
    outcome = { pushError: said(error) };
    console.error(`taskpod-git-state: the push failed: ${outcome.pushError}`);
    process.exitCode = 1;
  }
  try {
    await post({ ...gitState(), ...outcome });
  } catch (error) {
    console.error(`taskpod-git-state: ${error.message.split("\n")[0]}`);
    process.exitCode = 1;
  }
}

let posted = "";

async function look() {
  try {
    const state = gitState();
    const said = JSON.stringify(state);
    if (said === posted) return;
    await post(state);
    posted = said;
  } catch (error) {
    console.error(`taskpod-git-state: ${error.message.split("\n")[0]}`);
  }
}

async function agentIsStable() {
  try {
    const answer = await fetch(agentStatus, { signal: AbortSignal.timeout(2000) });
    return (await answer.json()).status === "stable";
  } catch {
    return null; // not answering (yet): no news
  }
}

async function watch() {
  let wasStable = null;
  let lastLook = 0;
  for (;;) {
    const stable = await agentIsStable();
    const now = Date.now();
    if ((stable === true && wasStable !== true) || now - lastLook >= refresh) {
      lastLook = now;
      await look();
    }
    if (stable !== null) wasStable = stable;
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}

if (!checkout || !process.env.TASKPOD_REPORT_URL) {
  console.error("taskpod-git-state: TASKPOD_CHECKOUT and TASKPOD_REPORT_URL are needed; nothing to do");
} else if (process.argv[2] === "watch") {
  await watch();
} else if (process.argv[2] === "once") {
  await look();
} else if (process.argv[2] === "push") {
  await push();
} else {
  console.error("usage: taskpod-git-state watch|once|push");
  process.exitCode = 2;
}
