"""The measure stage: measurement.json and the files that follow from it.

measurement.json (expected launch digest, identity digests, node
configuration), host_data.b64 for the launcher, reference-values.json for
verifiers and snp_trusted.json for HyperBEAM peers.
"""

from __future__ import annotations

from hbos.attest import peer as hyperbeam, reference
from hbos.measure import digest as measure, identity, nodeconfig as hostdata


def write(cfg, paths) -> None:
    record = measure.measure_vm_config(paths.vm_config, paths.measurement,
                                       source_date_epoch=cfg.source_date_epoch,
                                       extra=lambda rec: identity.measurement_fields(cfg, rec))
    expected = record["expected_hash"] or f"none ({record['expected_hash_reason']})"
    hostdata.write_b64(paths.host_data, record["host_data"])
    reference.write(paths.reference_values, record, str(paths.measurement))
    hyperbeam.write_trusted(paths.snp_trusted, record)
    print(f"measure: expected launch digest {expected}\n"
          f"  HOST_DATA (node configuration) {record['host_data']}")
