"""Running the measured VM.

The QEMU command line as pure functions (qemu), the decisions a start makes and
`--dry-run` prints (plan), start, stop and status (start), QEMU's monitor
(qmp), the host's side of the node's network: port forwards and HTTP calls
(node_http), and the same VM as a libvirt domain (libvirt).
"""
