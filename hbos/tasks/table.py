"""Every build stage with the config keys it reads.

One declaration per stage serves twice: dodo.py makes the task's
`config_changed` from it, and the stage function receives a view of the
config that holds only those keys (hbos.config.ConfigView; under tests,
HBOS_STRICT_CONFIG=1, reading any other key fails). So a key a stage reads
always reruns it when it changes (tests/unit/tasks/test_stage_config.py checks
both over the real task graph).

The declarations live here, beside the name of the function they describe,
rather than in the stage modules: dodo.py needs them at graph time, and
importing the stage modules there (with sev-snp-measure, cryptography,
jinja2, requests) is what made `doit list` slow. When a stage starts to read
a new key, declare it here; the strict view names the key it missed.
"""

from __future__ import annotations

from hbos.config import Reads
from hbos.tasks.adapter import Stage

SNP_BUNDLE = Stage("snp_release", "hbos.stages.snp_bundle:fetch_bundle", Reads("snp_release"))

KERNEL_DEB = Stage("kernel_deb", "hbos.stages.kernel:fetch_package", Reads("kernel"))

KERNEL = Stage("kernel", "hbos.stages.kernel:unpack", Reads("kernel"))

# the local Erlang release (tools/hb_node)
HB_NODE = Stage("hb_node", "hbos.stages.hb_node:build", Reads("source_date_epoch"))

# HyperBEAM's release from the pinned sources (content.source: hyperbeam); the
# firmware goes into the content (test/OVMF-1.55.fd), not into this stage
HYPERBEAM = Stage("hyperbeam", "hbos.stages.hyperbeam:build",
                  Reads("hyperbeam", "source_date_epoch"))

# the AO compute unit from its pinned source (content.source: hyperbeam, content.cu);
# content.cu_env: its UNIT_MODE is checked against the CU's config.js
CU = Stage("cu", "hbos.stages.ao_cu:build",
           Reads("hyperbeam", "source_date_epoch", "content.cu_env"))

# rootfs.suite: the docker build checks its images match the guest's suite;
# firmware: which OVMF goes in as HyperBEAM's reference (its file is a file_dep)
CONTENT = Stage("content", "hbos.stages.content:build",
                Reads("content", "ports", "source_date_epoch", "rootfs.suite", "rootfs.packages",
                      "firmware"))

INITRAMFS = Stage("initramfs", "hbos.stages.initramfs:build",
                  Reads("initramfs", "image.filesystem", "source_date_epoch"))

# its up-to-date check compares these keys with the record kept beside rootfs.tar
BASE_ROOTFS = Stage("base_rootfs", "hbos.stages.rootfs:build", Reads("rootfs", "source_date_epoch"),
                    up_to_date="hbos.stages.rootfs:up_to_date")

BASE_IMAGE = Stage("base_image", "hbos.stages.rootfs:build_image", Reads("source_date_epoch"))

VERITY = Stage("verity", "hbos.stages.verity:build", Reads("image", "debug", "source_date_epoch"))

FIRMWARE = Stage("firmware", "hbos.stages.edk2:build_ovmf", Reads("firmware", "source_date_epoch"))

# the firmware reaches it as a file (file_dep), not as config
VM_CONFIG = Stage("vm_config", "hbos.stages.vmconfig:write",
                  Reads("vm", "cmdline", "debug", "initramfs.path"))

# measurement.json, HOST_DATA (the node configuration document: config.flat and
# the post-start body), reference values, snp_trusted.json
MEASURE = Stage("measure", "hbos.stages.measure:write",
                Reads("source_date_epoch", "identity", "ports.hyperbeam",
                      "content.hyperbeam_operator", "content.hyperbeam_config", "post_start",
                      "launch.host_port"))

ID_BLOCK = Stage("id_block", "hbos.measure.idblock:write_id_block", Reads("identity"))

# the manifest records the ports; provenance.json the kernel, firmware, base
# root, VM and trusted keys
PACKAGE_RELEASE = Stage("package_release", "hbos.release.pack:package_release",
                        Reads("release.name", "release.compresslevel", "release.trusted_keys",
                              "source_date_epoch", "identity", "ports", "vm", "firmware",
                              "kernel.source", "kernel.package", "rootfs.suite",
                              "rootfs.mirror"))

# the launch identity files reach it as files (file_dep)
LIBVIRT_XML = Stage("libvirt_xml", "hbos.launch.libvirt:write",
                    Reads("launch.machine", "launch.cbitpos", "launch.reduced_phys_bits",
                          "launch.id_block", "launch.id_auth", "launch.host_data",
                          "identity.enabled"))

ALL = (SNP_BUNDLE, KERNEL_DEB, KERNEL, HB_NODE, HYPERBEAM, CU, CONTENT, INITRAMFS, BASE_ROOTFS, BASE_IMAGE,
       VERITY, FIRMWARE, VM_CONFIG, MEASURE, ID_BLOCK, PACKAGE_RELEASE, LIBVIRT_XML)
