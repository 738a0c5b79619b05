"""Shared by the package tests: the Debian packages built from this tree
(once per process), and a booted Debian 12 root under systemd-nspawn."""

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
import time

SRC = os.path.abspath(os.environ.get("IVH_SOURCE_DIR") or
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
# The debootstrapped root is cached outside the repository; without the
# cache it is built (about a minute with a reachable Debian mirror).
CACHE = os.environ.get("IVH_NSPAWN_CACHE", "/var/cache/ivh-reclaimd-tests")
MIRROR = os.environ.get("IVH_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the root needs besides minbase: a booting systemd, the package's
# dependencies, and node_exporter for the textfile recipe.
ROOT_PACKAGES = ("systemd,systemd-sysv,dbus,libev4,libcurl4,libcjson1,libyaml-0-2,libsystemd0,libssl3,"
                 "ca-certificates,procps,prometheus-node-exporter")

_built = {}


def run(*cmd, check=True, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError("%s exited %d\n--- stdout\n%s--- stderr\n%s"
                             % (" ".join(cmd), p.returncode, p.stdout[-4000:], p.stderr[-4000:]))
    return p


def build(name, workdir=None, version=None):
    """Builds the packages with scripts/build-deb.sh; returns {package: path}.
    Each (name) is built once per process."""
    if name in _built:
        return _built[name]
    out = tempfile.mkdtemp(prefix="ivh-debs-%s-" % name)
    env = dict(os.environ)
    if version:
        env["IVH_DEB_VERSION"] = version
    args = [os.path.join(SRC, "scripts", "build-deb.sh"), out]
    if workdir:
        args.append(workdir)
    run(*args, env=env, timeout=900)
    debs = {}
    for path in glob.glob(os.path.join(out, "*.deb")):
        debs[os.path.basename(path).split("_")[0]] = path
    _built[name] = debs
    return debs


def root_tarball():
    """The cached debootstrapped Debian 12 root, as a tar file (built if missing)."""
    key = hashlib.sha256((ROOT_PACKAGES + MIRROR).encode()).hexdigest()[:12]
    tar = os.path.join(CACHE, "bookworm-%s.tar" % key)
    if os.path.exists(tar):
        return tar
    os.makedirs(CACHE, exist_ok=True)
    work = tempfile.mkdtemp(prefix="ivh-debootstrap-", dir=CACHE)
    try:
        root = os.path.join(work, "root")
        run("debootstrap", "--variant=minbase", "--include=" + ROOT_PACKAGES, "bookworm", root, MIRROR,
            timeout=1800)
        run("tar", "-C", root, "--numeric-owner", "-cf", tar + ".new", ".", timeout=600)
        os.rename(tar + ".new", tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tar


class Container:
    """A Debian 12 root booted with systemd-nspawn --boot: systemd is PID 1
    inside. It shares the host's network, so the daemon inside reaches the
    simulator on 127.0.0.1. Commands run inside through nsenter (no
    machined is needed on the host)."""

    def __init__(self, name, before_boot=None):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="ivh-nspawn-")
        self.root = os.path.join(self.dir, "root")
        os.mkdir(self.root)
        run("tar", "-C", self.root, "--numeric-owner", "-xf", root_tarball(), timeout=600)
        with open(os.path.join(self.root, "etc", "hostname"), "w") as f:
            f.write(name + "\n")
        if before_boot:
            before_boot(self)
        self.log = open(os.path.join(self.dir, "console.log"), "w")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--console=pipe",
             "--machine=" + name, "-D", self.root],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.leader = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.leader is None:
            if self.proc.poll() is not None:
                raise AssertionError("systemd-nspawn exited %d:\n%s" % (self.proc.returncode, self.console()))
            kids = run("pgrep", "-P", str(self.proc.pid), check=False).stdout.split()
            if kids:
                self.leader = int(kids[0])
            else:
                time.sleep(0.2)
        if self.leader is None:
            raise AssertionError("the container's init did not start:\n" + self.console())
        # Wait for the container's systemd to finish booting.
        state = ""
        while time.monotonic() < deadline:
            state = self.sh("systemctl is-system-running --wait", check=False, timeout=60).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        if state not in ("running", "degraded"):
            raise AssertionError("the container did not boot (%s):\n%s" % (state, self.console()))

    def console(self):
        self.log.flush()
        with open(os.path.join(self.dir, "console.log"), errors="replace") as f:
            return f.read()[-6000:]

    def sh(self, script, check=True, timeout=120, input=None):
        """Runs a shell script inside, as root."""
        p = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", "/bin/sh", "-c", script],
                           capture_output=True, text=True, timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise AssertionError("in the container: %s\nexited %d\n--- stdout\n%s--- stderr\n%s"
                                 % (script, p.returncode, p.stdout[-4000:], p.stderr[-4000:]))
        return p

    def path(self, inside):
        return os.path.join(self.root, inside.lstrip("/"))

    def put(self, inside, data, mode=0o644):
        path = self.path(inside)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(data)
        os.chmod(path, mode)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()  # nspawn asks the container's systemd to power off
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
