"""Helpers below everything else in hbos (they import only hbos.errors and hbos.paths).

    run        running and starting commands (run, output, spawn)
    tools      host programs and the Debian package of each
    fsutil     atomic writes, streaming hashes, JSON files
    limits     bounded reading of untrusted files, the VM's shared ranges
    tree       directory trees: walk, clone, copy, normalize, manifest, fingerprint, size
    archive    safe tar extraction
    fetch      downloading a URL (streamed, hashed, retried)
    lock       one run at a time (flock under build/locks/)
    templates  rendering templates/ with jinja2
    cache      the content-addressed artifact cache
    debpkg     reading Debian packages' control fields and dpkg's status stanzas
"""
