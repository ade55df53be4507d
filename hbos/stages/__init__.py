"""The build stages: the work of dodo.py's build tasks (the task in parentheses), and the
helpers they share. hbos/tasks/table.py names the function each stage task runs.

    hosttools   the host programs the configured stages need (init)
    snp_bundle  AMD's SNP bundle: fetch, unpack, find its kernel, QEMU, OVMF (snp_release)
    apt         a private apt for one Debian suite under build/apt (for kernel)
    kernel      the guest kernel .deb: fetch it, unpack vmlinuz and modules (kernel_deb, kernel)
    hb_node     tools/hb_node as a relx release (hb_node)
    docker      the docker command lines of the content build (for content)
    content     the guest content tree and its manifest (content)
    initramfs   the initramfs that opens the verity root (initramfs)
    rootfs      the base Debian root and the debug disk (base_rootfs, base_image)
    guest_boot  what the guest does not run at boot (for verity)
    veritytree  the dm-verity hash tree computed in-process, the check after format (for verity)
    verity      the measured guest root: image, hash tree, root hash (verity)
    firmware    which OVMF is booted and measured
    edk2        the SEV-SNP OVMF built from Debian's edk2 source (firmware)
    vmconfig    the VM definition vm-config.toml (vm_config)
    measure     measurement.json, HOST_DATA, reference values, snp_trusted.json (measure)

Three more stage tasks live beside what they use: id_block in hbos.measure.idblock,
libvirt_xml in hbos.launch.libvirt, package_release in hbos.release.pack.
"""
