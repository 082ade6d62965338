"""A forge over ssh for tests: Debian's OpenSSH server on loopback, taking one key, serving any bare
repository on this machine by its path (`ssh://root@127.0.0.1:PORT/path/to/shop.git`), as a forge serves
`git@host:acme/shop.git`.

The server is never installed: its package (and libwrap0, its one library the client does not bring) is
fetched with `apt-get download` once and unpacked under ~/.cache. sshd wants its privilege-separation user
and /run/sshd, which the host need not have, so it runs in a mount namespace of its own that has both: the
host's /etc/passwd with that user added, bound over the real one, and a fresh /run. It takes root, as the
real-node tests do."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "taskpod" / "openssh-server"
PACKAGES = ("openssh-server", "libwrap0")


def unavailable() -> str | None:
    """Why a server cannot run here, or None."""
    if os.geteuid() != 0:
        return "sshd needs root for its privilege separation"
    for tool in ("apt-get", "dpkg-deb", "unshare", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def sshd() -> tuple[Path, Path]:
    """The server binary and its library directory, unpacked from Debian's packages on first use."""
    root = CACHE / "root"
    binary, libs = root / "usr/sbin/sshd", root / "usr/lib/x86_64-linux-gnu"
    if binary.exists():
        return binary, libs
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        os.chmod(tmp, 0o755)  # apt's sandbox user writes the download here
        run = subprocess.run(["apt-get", "download", *PACKAGES], cwd=tmp, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"apt-get download {' '.join(PACKAGES)} failed:\n{run.stderr[-2000:]}")
        staged = Path(tmp) / "root"
        for deb in Path(tmp).glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(staged)], check=True)
        os.replace(staged, root)
    return binary, libs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SshServer:
    work: Path  # its keys, configuration and log
    port: int = 0
    logins: list[str] = field(default_factory=list)
    _process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SshServer:
        binary, libs = sshd()
        self.work.mkdir(parents=True, exist_ok=True)
        for key in ("host", "client"):
            keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.work / key)]
            subprocess.run(keygen, check=True)
        shutil.copy(self.work / "client.pub", self.work / "authorized_keys")
        passwd = self.work / "passwd"
        privsep = "sshd:x:64999:65534::/run/sshd:/usr/sbin/nologin\n"
        passwd.write_text(Path("/etc/passwd").read_text() + privsep)
        self.port = _free_port()
        (self.work / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.work / 'host'}\n"
            f"AuthorizedKeysFile {self.work / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\nStrictModes no\n"
            f"PidFile {self.work / 'pid'}\n"
        )
        script = (
            'mount -t tmpfs tmpfs /run && mkdir -m 755 /run/sshd && mount --bind "$1" /etc/passwd && '
            'LD_LIBRARY_PATH="$2" exec "$3" -D -e -f "$4"'
        )
        args = [str(passwd), str(libs), str(binary), str(self.work / "sshd_config")]
        log = (self.work / "log").open("wb")
        self._process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sshd", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while "Server listening" not in self.log():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"sshd did not start:\n{self.log()}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)

    def log(self) -> str:
        path = self.work / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def url(self, bare: Path) -> str:
        return f"ssh://root@127.0.0.1:{self.port}{bare}"

    @property
    def private_key(self) -> str:
        return (self.work / "client").read_text()

    @property
    def known_hosts(self) -> str:
        """The line a `kubernetes.io/ssh-auth` Secret's known_hosts holds for this server."""
        kind, key = (self.work / "host.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"
