"""The command-line params of the doit tasks that take them (doit "params").

dodo.py reads these at graph time, so this module stays plain data: the
code that receives the params (hbos.launch, hbos.release_fetch,
hbos.attest_cli, hbos.host_setup) is imported only when the task runs.
"""

# `doit start --data-disk PATH --self URL --peer URL --no-auto` (also used by
# start_release): the original tool's options.
START = [
    {"name": "data_disk", "long": "data-disk", "type": str, "default": "",
     "help": "a writable disk image attached after the root disks (/dev/vdc)"},
    {"name": "self_url", "long": "self", "type": str, "default": "",
     "help": "this node's URL as peers reach it (default: post_start.self_url, else http://localhost:<host port>)"},
    {"name": "peer_url", "long": "peer", "type": str, "default": "",
     "help": "a peer node's URL, sent in the post-start configuration"},
    {"name": "no_auto", "long": "no-auto", "type": bool, "default": False,
     "help": "do not send the post-start configuration"},
    {"name": "dry_run", "long": "dry-run", "type": bool, "default": False,
     "help": "print the mode, accelerator, firmware and the QEMU command line; start nothing"},
    {"name": "mode", "long": "mode", "type": str, "default": "",
     "help": "auto | snp | emulated (default: launch.snp); with --dry-run, snp builds "
             "the SNP command line even on a host without SNP"},
    {"name": "qemu", "long": "qemu", "type": str, "default": "",
     "help": "the QEMU binary (default: launch.qemu, the snp-release bundle's, else PATH)"},
]


DOWNLOAD_RELEASE = [
    {"name": "url", "long": "url", "type": str, "default": "",
     "help": "release tarball URL, file:// URL or path (default: release.url)"},
    {"name": "sha256", "long": "sha256", "type": str, "default": "",
     "help": "expected tarball sha256 (default: release.sha256)"},
    {"name": "trusted_key", "long": "trusted-key", "type": str, "default": "",
     "help": "author public key (PEM): refuse a release not signed by it "
             "(default: release.trusted_keys)"},
]


# `doit verify_report --report FILE ...`
VERIFY_REPORT = [
    {"name": "report", "long": "report", "type": str, "default": "",
     "help": "the attestation report file (binary, hex or sev JSON)"},
    {"name": "vcek", "long": "vcek", "type": str, "default": "",
     "help": "the chip's VCEK (PEM or DER); default: fetched from the KDS and cached"},
    {"name": "certs_dir", "long": "certs-dir", "type": str, "default": "",
     "help": "directory with ark_<product>.pem and ask_<product>.pem (offline)"},
    {"name": "report_data", "long": "report-data", "type": str, "default": "",
     "help": "expected REPORT_DATA (hex)"},
    {"name": "vmpl", "long": "vmpl", "type": str, "default": "", "help": "expected VMPL"},
    {"name": "allow_debug", "long": "allow-debug", "type": bool, "default": False,
     "help": "accept a policy that allows debugging"},
    {"name": "json", "long": "json", "type": bool, "default": False,
     "help": "print the verdict as JSON"},
    {"name": "at", "long": "at", "type": str, "default": "",
     "help": "verification time (ISO 8601 or Unix seconds); default now"},
    {"name": "crl", "long": "crl", "type": str, "default": "",
     "help": "AMD's CRL for the product (DER or PEM); default: from the KDS"},
    {"name": "require_crl", "long": "require-crl", "type": bool, "default": False,
     "help": "fail when no current CRL can be had"},
]


SETUP_HOST = [
    {"name": "yes", "long": "yes", "type": bool, "default": False,
     "help": "install without asking (required when stdin is not a terminal)"},
]
