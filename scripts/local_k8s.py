#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback, for the k8s test tier and for trying the
chart by hand: etcd, kube-apiserver (RBAC, a self-signed CA, a static token file) and
kube-controller-manager (garbage collector, namespaces, Deployments, service-account
tokens). No scheduler and no kubelet: pods stay Pending.

    python scripts/local_k8s.py run -- kubectl get ns   # up, run, down (KUBECONFIG set)
    python scripts/local_k8s.py binaries                # only fetch or build the binaries

The binaries are kube-apiserver and kube-controller-manager v1.20.2 built from Debian's
``kubernetes`` source package: taken from ``../shared/k8s`` (or ``$KIZUNA_K8S_PREBUILT``)
when present and checked against its SHA256SUMS, else built with the recipe in
``build_binaries`` (~25 minutes on 2 cores) and cached in ``$KIZUNA_K8S_CACHE``
(default ``~/.cache/kizuna/k8s-v1.20.2``). etcd is Debian's ``etcd-server``.

Everything it starts runs in its own process group and is stopped on exit, on an
exception, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

VERSION = "v1.20.2"
BINARIES = ("kube-apiserver", "kube-controller-manager")
REPO = Path(__file__).resolve().parent.parent
PREBUILT = Path(os.environ.get("KIZUNA_K8S_PREBUILT", REPO.parent / "shared" / "k8s"))
CACHE = Path(
    os.environ.get("KIZUNA_K8S_CACHE", Path.home() / ".cache" / "kizuna" / f"k8s-{VERSION}")
)
ADMIN_TOKEN_NAME = "admin"
READY_TIMEOUT_S = 120.0


def _log(message: str) -> None:
    print(f"local-k8s: {message}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_sums(sums_file: Path) -> dict[str, str]:
    sums = {}
    for line in sums_file.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        sums[name] = digest
    return sums


def _verified(directory: Path, sums: dict[str, str]) -> bool:
    return all(
        (directory / name).is_file() and _sha256(directory / name) == sums.get(name)
        for name in BINARIES
    )


def build_binaries(destination: Path) -> None:
    """The recipe of ``../shared/k8s/README.md``: Debian's source package, offline."""
    _log("building kube-apiserver and kube-controller-manager from Debian's sources (~25 min)")
    packages = "golang-go make rsync golang-github-modern-go-reflect2-dev dpkg-dev"
    with tempfile.TemporaryDirectory() as work:
        script = f"""
set -euo pipefail
grep -rqs '^deb-src .*bookworm' /etc/apt/sources.list /etc/apt/sources.list.d/ || \
  echo 'deb-src http://deb.debian.org/debian bookworm main' \
    > /etc/apt/sources.list.d/kizuna-src.list
apt-get update -qq && apt-get install -y -qq --no-install-recommends {packages} >/dev/null
cd {work} && apt-get source --download-only kubernetes
tar xzf kubernetes_*.orig.tar.gz && cd kubernetes-1.20.2
# The vendored reflect2 v1.0.1 segfaults under Debian's Go 1.19 on custom resources.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/
rm -f vendor/github.com/modern-go/reflect2/go.mod
mkdir -p .go/src/k8s.io && ln -s ../../.. .go/src/k8s.io/kubernetes
GOPATH=$PWD/.go CGO_ENABLED=0 GOPROXY=off KUBE_GIT_VERSION={VERSION} \
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
install -m 0755 _output/bin/kube-apiserver _output/bin/kube-controller-manager {destination}/
"""
        destination.mkdir(parents=True, exist_ok=True)
        subprocess.run(["bash", "-c", script], check=True)


def ensure_binaries() -> Path:
    """The directory holding verified binaries (see the module docstring)."""
    sums_file = PREBUILT / "SHA256SUMS"
    if sums_file.is_file():
        sums = _expected_sums(sums_file)
        if _verified(CACHE, sums):
            return CACHE
        CACHE.mkdir(parents=True, exist_ok=True)
        for name in BINARIES:
            packed = PREBUILT / f"{name}.xz"
            if _sha256(packed) != sums[f"{name}.xz"]:
                raise RuntimeError(f"{packed} does not match {sums_file}")
            with lzma.open(packed) as source, (CACHE / name).open("wb") as target:
                shutil.copyfileobj(source, target)
            (CACHE / name).chmod(0o755)
        if not _verified(CACHE, sums):
            raise RuntimeError(f"the unpacked binaries do not match {sums_file}")
        return CACHE
    if all((CACHE / name).is_file() for name in BINARIES):
        return CACHE  # built here before; there is no reference to check against
    build_binaries(CACHE)
    return CACHE


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager under ``root`` (see module doc).

    ``tokens`` maps extra static-token identities (name → group) a test needs.
    """

    def __init__(self, root: Path, binaries: Path, tokens: dict[str, str] | None = None) -> None:
        self.root = root
        self.binaries = binaries
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = root / "ca.crt"
        self.kubeconfig = root / "admin.kubeconfig"
        self.tokens = {ADMIN_TOKEN_NAME: "system:masters", **(tokens or {})}
        self.bearer = {
            name: hashlib.sha256(f"{name}{root}".encode()).hexdigest() for name in self.tokens
        }
        self._processes: list[subprocess.Popen[bytes]] = []
        self.ready_s = 0.0

    # --- files ----------------------------------------------------------------------

    def _write_credentials(self) -> None:
        pki = self.root
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=kizuna-test-ca",
            "-keyout",
            str(pki / "ca.key"),
            "-out",
            str(self.ca),
        )
        (pki / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=kube-apiserver",
            "-keyout",
            str(pki / "server.key"),
            "-out",
            str(pki / "server.csr"),
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(pki / "server.csr"),
            "-CA",
            str(self.ca),
            "-CAkey",
            str(pki / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(pki / "san.cnf"),
            "-out",
            str(pki / "server.crt"),
        )
        _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
        _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
        lines = [f"{self.bearer[n]},{n},{n},{g}" for n, g in self.tokens.items()]
        (pki / "tokens.csv").write_text("\n".join(lines) + "\n")
        self.kubeconfig.write_text(self.kubeconfig_for(self.bearer[ADMIN_TOKEN_NAME]))
        for key in ("ca.key", "server.key", "sa.key", "tokens.csv"):
            (pki / key).chmod(0o600)

    def kubeconfig_for(self, token: str, namespace: str = "default") -> str:
        """A kubeconfig that talks to this server as the bearer of ``token``."""
        return f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {{server: "{self.url}", certificate-authority: "{self.ca}"}}
users:
- name: user
  user: {{token: "{token}"}}
contexts:
- name: local
  context: {{cluster: local, user: user, namespace: "{namespace}"}}
current-context: local
"""

    # --- processes ------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str]) -> None:
        log = (self.root / f"{name}.log").open("wb")
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._processes.append(process)

    def start(self) -> None:
        """Start the three servers and wait until the API server is ready."""
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_credentials()
        etcd_port, peer_port = free_port(), free_port()
        self._spawn(
            "etcd",
            [
                "etcd",
                "--data-dir",
                str(self.root / "etcd"),
                "--name",
                "kizuna-test",
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"kizuna-test=http://127.0.0.1:{peer_port}",
            ],
        )
        pki = self.root
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                "--insecure-port=0",
                f"--tls-cert-file={pki / 'server.crt'}",
                f"--tls-private-key-file={pki / 'server.key'}",
                f"--client-ca-file={self.ca}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.96.0.0/24",
                f"--cert-dir={pki / 'certs'}",
            ],
        )
        self._wait_ready()
        self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                "--port=0",
                "--controllers=*,-service,-route,-nodeipam,-nodelifecycle,-cloud-node-lifecycle",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={self.ca}",
            ],
        )
        self.ready_s = time.monotonic() - started

    def _wait_ready(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca))
        request = urllib.request.Request(
            f"{self.url}/readyz",
            headers={"Authorization": f"Bearer {self.bearer[ADMIN_TOKEN_NAME]}"},
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            for process in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited; see {self.root}/*.log")
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"kube-apiserver not ready in {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.25)

    def stop(self) -> None:
        """Stop everything started, newest first: SIGTERM, then SIGKILL after 10 s."""
        for process in reversed(self._processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in reversed(self._processes):
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._processes.clear()

    @property
    def pids(self) -> list[int]:
        """The process ids of the servers started."""
        return [process.pid for process in self._processes]


@contextmanager
def local_cluster(root: Path, tokens: dict[str, str] | None = None) -> Iterator[LocalCluster]:
    """A started :class:`LocalCluster`, stopped whatever happens (SIGTERM included)."""
    cluster = LocalCluster(root, ensure_binaries(), tokens)

    def terminate(signum: int, _: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    """``run -- CMD``: CMD against a fresh cluster; ``binaries``: prepare them only."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("binaries", help="fetch (or build) and verify the binaries")
    run = commands.add_parser("run", help="start a cluster, run a command, stop it")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command == "binaries":
        print(ensure_binaries())
        return 0
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    with (
        tempfile.TemporaryDirectory(prefix="kizuna-k8s-") as root,
        local_cluster(Path(root)) as cluster,
    ):
        _log(f"API server ready at {cluster.url} in {cluster.ready_s:.1f} s")
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        return subprocess.run(argv or ["kubectl", "version"], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
