"""The SNP host: can it run SEV-SNP guests, and installing the stack that can.

- check: the host checks (`doit check_host`; the `hbos check-host` command is
  hbos.cli.check_host);
- setup: `doit setup_host`: chooses the stock Debian stack or an AMDSEV
  SNP bundle's, and installs the bundle's;
- debian: installs Debian trixie's kernel and QEMU; names the libraries a
  bundle's QEMU lacks on this host;
- system: what they read and the rules they share (os-release, dpkg status,
  the running kernel, root and confirmation, the command runner).

Imports run one way: setup -> debian -> system, check -> system; nothing here
imports setup or check.
"""
