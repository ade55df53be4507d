"""Our release: the directory and tarball package_release writes, download_release
fetches, verifies and installs, and start_release starts.

One module per concern, each importing only the ones listed above it:

    layout      the names of a release's files, its manifest; reading them (no other release module)
    unpack      a release tarball -> a directory, only what its manifest names (layout)
    provenance  manifest.json.sig and provenance.json: sign, check a signer, describe (layout)
    verify      verify_release: files, launch digest, measurement, ID block, signature (layout, provenance)
    pack        package_release: the build -> build/release/ and release.tar.gz (layout, provenance, verify)
    fetch       download_release: fetch, unpack, verify, install (layout, provenance, unpack, verify)
    start       start_release: re-verify the installed release, start it by hbos.launch.start
                (layout, provenance, verify)
"""
