"""The command-line params of the doit tasks that take them (doit "params").

dodo.py reads these at graph time, so this module stays plain data (`opt`
and `flag` only spell the dicts doit wants): the code that receives the
params (hbos.launch.start, hbos.release.fetch, hbos.cli.verify_report, hbos.host.setup)
is imported only when the task runs.
"""


def opt(name: str, help: str, *, long: str = "") -> dict:
    """A string option `--long VALUE` (long defaults to the name with dashes), default ""."""
    return {"name": name, "long": long or name.replace("_", "-"), "type": str, "default": "",
            "help": help}


def flag(name: str, help: str, *, long: str = "") -> dict:
    """A boolean option `--long`, default off."""
    return {"name": name, "long": long or name.replace("_", "-"), "type": bool, "default": False,
            "help": help}


# `doit start --data-disk PATH --self URL --peer URL --no-auto` (also used by
# start_release): the original tool's options, and ours.
START = [
    opt("data_disk", "a writable disk image attached after the root disks (/dev/vdc)"),
    opt("self_url", "this node's URL as peers reach it "
                    "(default: post_start.self_url, else http://localhost:<host port>)", long="self"),
    opt("peer_url", "a peer node's URL, sent in the post-start configuration", long="peer"),
    flag("no_auto", "do not send the post-start configuration"),
    flag("dry_run", "print the mode, accelerator, firmware and the QEMU command line; start nothing"),
    opt("mode", "auto | snp | emulated (default: launch.snp); with --dry-run, snp builds "
                "the SNP command line even on a host without SNP"),
    opt("qemu", "the QEMU binary (default: launch.qemu, the SNP bundle's, else PATH)"),
    flag("allow_no_snp_nif", "start SEV-SNP even though the image's HyperBEAM has no SNP NIF "
                             "(no attestation reports; default: launch.allow_no_snp_nif)"),
]


DOWNLOAD_RELEASE = [
    opt("url", "release tarball URL, file:// URL or path (default: release.url)"),
    opt("sha256", "expected tarball sha256 (default: release.sha256)"),
    opt("trusted_key", "author public key (PEM): refuse a release not signed by it "
                       "(default: release.trusted_keys)"),
]


# `doit verify_report --report FILE ...`
VERIFY_REPORT = [
    opt("report", "the attestation report file (binary, hex or sev JSON)"),
    opt("vcek", "the chip's VCEK (PEM or DER); default: fetched from the KDS and cached"),
    opt("certs_dir", "directory with ark_<product>.pem and ask_<product>.pem (offline)"),
    opt("report_data", "expected REPORT_DATA (hex)"),
    opt("vmpl", "expected VMPL"),
    flag("allow_debug", "accept a policy that allows debugging"),
    flag("json", "print the verdict as JSON"),
    opt("at", "verification time (ISO 8601 or Unix seconds); default now"),
    opt("crl", "AMD's CRL for the product (DER or PEM); default: from the KDS"),
    flag("require_crl", "fail when no current CRL can be had"),
]


SETUP_HOST = [
    flag("yes", "install without asking (required when stdin is not a terminal)"),
]
