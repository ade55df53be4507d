"""Time report verification and the measurement-mismatch search (prints numbers).

    python3 benchmarks/attest_bench.py [VECTORS_DIR]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hbos.attest import certs, report, verify  # noqa: E402
from hbos.measure import explain  # noqa: E402
from hbos.measure.digest import EMPTY_SHA256, Firmware, LaunchInputs, cmdline_sha256, launch_digest  # noqa: E402


def main() -> None:
    vectors = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "vectors"
    att = vectors / "attestation"
    rep = report.load(att / "hbos-benign-report.bin")
    vcek = certs.load_cert_file(att / "hbos-vcek.crt")
    chain = certs.load_certs_dir(att / "certs", "milan")
    n = 50
    t = time.perf_counter()
    for _ in range(n):
        assert verify.verify(rep, vcek, chain, verify.Expectations()).ok
    print(f"verify (signature + chain + checks): {(time.perf_counter() - t) / n * 1000:.2f} ms")

    t = time.perf_counter()
    fw = Firmware(vectors / "measurement" / "ovmf_AmdSev_suffix.bin")
    _ = fw.launch_hash
    print(f"firmware launch hash (4 KiB fixture): {(time.perf_counter() - t) * 1000:.1f} ms")
    inputs = LaunchInputs("11" * 32, EMPTY_SHA256, cmdline_sha256("console=ttyS0"), 4,
                          "EPYC-v4", 0x1)
    for label, change in (("guest_features 0x21", {"guest_features": 0x21}),
                          ("7 vCPUs", {"vcpus": 7}), ("no match", {"kernel_sha256": "22" * 32})):
        target = bytes.fromhex(launch_digest(fw, inputs.replace(**change)))
        e = explain.explain(fw, inputs, target)
        print(f"explain ({label}): {e.seconds:.2f} s over {e.candidates} candidates -> "
              f"{e.message[:60]}")
    t = time.perf_counter()
    for v in range(1, 65):
        launch_digest(fw, inputs.replace(vcpus=v))
    per = (time.perf_counter() - t) / 64
    print(f"from scratch, per candidate (launch_digest): {per * 1000:.2f} ms "
          f"-> the same search would take ~{per * e.candidates:.0f} s")


if __name__ == "__main__":
    main()
