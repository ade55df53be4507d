"""Attestation: reading and verifying SEV-SNP reports, and what verifiers and peers trust.

    report     the ATTESTATION_REPORT: binary, hex text and sev-crate JSON
    certs      AMD's certificate chain (ARK, ASK/ASVK, VCEK/VLEK), validity, CRLs
    kds        fetching and caching certificates and CRLs from AMD's KDS
    verify     every check of a report against its expectations, and the verdict
    reference  reference-values.json: what a verifier trusts about a build
    peer       would a HyperBEAM peer accept this node (snp_trusted.json)
"""
