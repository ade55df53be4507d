"""What a launch is measured and pinned by.

The expected launch digest (digest, computed through sevsnp, the one module
that imports sev-snp-measure's digest code; explain names the launch parameter
behind a mismatch), the node configuration document whose sha256 is HOST_DATA
(nodeconfig), the launch identity keys and the ID block they sign (identity,
idblock), and which of those files a launch passes (launch_files).
"""
