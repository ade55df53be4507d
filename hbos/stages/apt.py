"""A private apt for one Debian suite, kept under build/ (never the host's /etc/apt).

`apt-get download` of a trixie package on a bookworm host needs a trixie
package index. Instead of adding a source to the host, the kernel stage runs
apt-get/apt-cache with options that point every directory apt uses at
build/apt/SUITE: its own sources.list (signed by the host's
debian-archive-keyring, which holds the bookworm and trixie keys), lists,
cache and an empty dpkg status (nothing is "installed", so nothing is ever
installed or removed). The host's apt configuration and state are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hbos.errors import BuildError
from hbos.util import run

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


@dataclass(frozen=True)
class PrivateApt:
    """apt restricted to `suite` from `mirror`, with all state under `root`."""
    root: Path
    suite: str
    mirror: str
    arch: str = "amd64"
    keyring: Path = KEYRING

    @property
    def sources_list(self) -> Path:
        return self.root / "sources.list"

    def sources_text(self) -> str:
        return (f"deb [arch={self.arch} signed-by={self.keyring}] "
                f"{self.mirror.rstrip('/')} {self.suite} main\n")

    def options(self) -> list[str]:
        """apt options that keep every file apt reads or writes under root."""
        r = self.root
        opts = {
            "Dir::Etc::SourceList": str(self.sources_list),
            "Dir::Etc::SourceParts": "/dev/null",
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": "/dev/null",
            "Dir::State::Lists": str(r / "lists"),
            "Dir::State::Status": str(r / "status"),
            "Dir::Cache": str(r / "cache"),
            "Debug::NoLocking": "1",
            "APT::Architecture": self.arch,
            "APT::Architectures::": self.arch,
            "APT::Sandbox::User": "root",
        }
        out: list[str] = []
        for key, value in opts.items():
            out += ["-o", f"{key}={value}"]
        return out

    def argv(self, program: str, *args: str) -> list[str]:
        return [program, "-q", *self.options(), *args]

    def prepare(self) -> None:
        """Create the private tree (sources.list, empty status, lists, cache)."""
        for d in (self.root / "lists" / "partial", self.root / "cache" / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        status = self.root / "status"
        if not status.exists():
            status.write_text("")
        if not self.sources_list.is_file() or self.sources_list.read_text() != self.sources_text():
            self.sources_list.write_text(self.sources_text())

    def update(self) -> None:
        """apt-get update of the private index (fails naming the mirror and suite)."""
        self.prepare()
        proc = run.run(self.argv("apt-get", "update"), check=False, quiet=True)
        text = (proc.stdout + proc.stderr).decode(errors="replace")
        if proc.returncode != 0 or "\nE: " in "\n" + text or "\nW: Failed" in "\n" + text:
            raise BuildError(f"apt-get update of {self.mirror} {self.suite} failed: "
                             f"{run.tail(text, 3)}",
                             hint="check kernel.mirror and kernel.suite, and the network")

    def download_argv(self, package: str) -> list[str]:
        return self.argv("apt-get", "download", package)
