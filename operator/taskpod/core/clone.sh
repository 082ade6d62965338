# The workspace pod's clone step (its init container "clone"): the task's repository into the volume,
# once. A later start finds the checkout and leaves it be: the agent's work is in it.
#
# In:  TASKPOD_REPO_URL, TASKPOD_REPO_DIR (absolute), TASKPOD_REPO_BRANCH, TASKPOD_REPO_DEPTH (0: all),
#      TASKPOD_REPO_REF (optional: the remote's default branch), TASKPOD_GIT_CREDENTIALS (optional: the
#      mounted Secret, whose values are redacted from what is printed), TASKPOD_GIT_SECRET (that Secret's
#      name, for the message when it is missing: the volume is optional so that the pod can start and say
#      so), and git's GIT_CONFIG_* and GIT_SSH_COMMAND that use it.
# Out: the checkout on its working branch, refs/taskpod/base at the commit it started from. On failure,
#      git's own words in the termination message, which the operator shows as the task's Error. No secret
#      is written to the volume, passed on a command line, or printed.
set -eu

dir=$TASKPOD_REPO_DIR
creds=${TASKPOD_GIT_CREDENTIALS:-}
staging="$(dirname "$dir")/.taskpod-clone.$(basename "$dir")"
log="${TMPDIR:-/tmp}/taskpod-clone.$$.log"

if [ -e "$dir/.git" ]; then
    echo "taskpod: $dir is a checkout already; not cloning again"
    exit 0
fi

trap 'rm -f "$log"' EXIT

# Anything the Secret holds, replaced in text that may be shown (git does not print it; belt and braces).
redact() {
    awk -v dir="$creds" '
        BEGIN {
            n = 0
            if (dir != "") {
                split("password token", names, " ")
                for (i in names) {
                    f = dir "/" names[i]
                    while ((getline line < f) > 0) if (length(line) > 3) secret[++n] = line
                    close(f)
                }
            }
        }
        {
            for (i = 1; i <= n; i++)
                while ((at = index($0, secret[i])) > 0)
                    $0 = substr($0, 1, at - 1) "[redacted]" substr($0, at + length(secret[i]))
            print
        }'
}

fail() {
    # The kubelet keeps the last 4 KiB of the termination message: git's last lines are its reason.
    message="$(redact < "$log" | grep -v '^$' | tail -n 8 | cut -c 1-400)"
    printf '%s: %s\n' "$1" "${message:-no output}" | tee "${TASKPOD_TERMINATION_LOG:-/dev/termination-log}" >&2 || true
    exit 1
}

# Credentials reach git through the environment the pod gives this step (workspace.credentials_env): a
# credential helper and an ssh command that read the mounted Secret when git asks; never the URL or the
# checkout's config.
set -- -c credential.interactive=never -c http.lowSpeedLimit=1 -c http.lowSpeedTime=120
export GIT_SSH_COMMAND="${GIT_SSH_COMMAND:-ssh -o BatchMode=yes -o ConnectTimeout=30 -o StrictHostKeyChecking=yes}"
export GIT_TERMINAL_PROMPT=0 GIT_ASKPASS=/bin/false SSH_ASKPASS=/bin/false

git check-ref-format --branch "$TASKPOD_REPO_BRANCH" > "$log" 2>&1 \
    || fail "The working branch $TASKPOD_REPO_BRANCH is not a valid branch name"
if [ -n "${TASKPOD_GIT_SECRET:-}" ] && [ ! -f "$creds/password" ] && [ ! -f "$creds/token" ] \
    && [ ! -f "$creds/ssh-privatekey" ]; then
    # The kubelet refreshes the volume when the Secret appears, and the next try (with back-off) clones.
    echo "it is missing, or holds none of the keys password, token and ssh-privatekey" > "$log"
    fail "The credentials Secret $TASKPOD_GIT_SECRET cannot be used"
fi
if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
    echo "$dir holds files and is not a git checkout" > "$log"
    fail "Cannot clone into $dir"
fi

echo "taskpod: cloning $TASKPOD_REPO_URL${TASKPOD_REPO_REF:+ at $TASKPOD_REPO_REF} into $dir" | redact
rm -rf "$staging" # what a clone cut short left
mkdir -p "$staging"
depth=""
[ "${TASKPOD_REPO_DEPTH:-1}" = 0 ] || depth="--depth=${TASKPOD_REPO_DEPTH:-1}"
{
    git -C "$staging" init --quiet &&
        git -C "$staging" remote add origin "$TASKPOD_REPO_URL" &&
        # shellcheck disable=SC2086  # $depth is one word or none
        git "$@" -C "$staging" fetch --quiet --no-tags $depth origin "${TASKPOD_REPO_REF:-HEAD}"
} > "$log" 2>&1 || fail "git fetch failed"
{
    git -C "$staging" checkout --quiet -b "$TASKPOD_REPO_BRANCH" FETCH_HEAD &&
        git -C "$staging" update-ref refs/taskpod/base HEAD &&
        # The agent's commits need an author; GIT_AUTHOR_NAME and the like in the template's env win.
        git -C "$staging" config user.name "taskpod agent" &&
        git -C "$staging" config user.email "agent@taskpod.invalid"
} > "$log" 2>&1 || fail "git checkout failed"
rmdir "$dir" 2> /dev/null || true # an empty directory where the checkout goes
mkdir -p "$(dirname "$dir")"
mv "$staging" "$dir"
echo "taskpod: $dir is on branch $TASKPOD_REPO_BRANCH at $(git -C "$dir" rev-parse --short HEAD)"
