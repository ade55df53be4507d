"""The SEV-SNP ATTESTATION_REPORT: parse the binary layout, hex text and sev-crate JSON.

Layout from the AMD SEV Secure Nested Paging Firmware ABI Specification
(publication 56860), "ATTESTATION_REPORT Structure": Table 22 in rev 1.55,
Table 23 in rev 1.57/1.58. The report is 0x4A0 (1184) bytes, little-endian.
Bytes 0x000..0x29F are signed; the SIGNATURE structure at 0x2A0 holds R and S
as 72-byte little-endian integers (ABI spec "ECDSA P-384 with SHA-384
Signature", Table 139/141), the rest of it reserved.

Version 2 is the original layout. Version 3 (rev 1.57) fills CPUID_FAM_ID,
CPUID_MOD_ID and CPUID_STEP at 0x188..0x18A (reserved before); version 5
(rev 1.58, Turin firmware) adds LAUNCH_MIT_VECTOR (0x1F8) and
CURRENT_MIT_VECTOR (0x200). Turin also lays out TCB_VERSION differently
(FMC, BOOT_LOADER, TEE, SNP, ..., MICROCODE) from Milan/Genoa (BOOT_LOADER,
TEE, 4 reserved, SNP, MICROCODE): ABI spec Table 3 "TCB_VERSION Structure".
"""

from __future__ import annotations

import difflib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hbos.errors import AttestationError

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIG_R_OFFSET = 0x2A0
SIG_S_OFFSET = 0x2E8
SIG_COMPONENT_SIZE = 72
SIG_ALGO_ECDSA_P384_SHA384 = 1
# The sev-guest driver's SNP_GET_REPORT response (MSG_REPORT_RSP, ABI spec
# Table "MSG_REPORT_RSP Message Structure"): STATUS u32, REPORT_SIZE u32,
# 24 reserved bytes, then the report.
MSG_REPORT_RSP_HEADER = 0x20

POLICY_DEBUG_BIT = 19  # ABI spec Table 9 "Guest Policy Structure": DEBUG
POLICY_MIGRATE_MA_BIT = 18
POLICY_RESERVED_ONE_BIT = 17  # "must be one"
POLICY_HIGHEST_DEFINED_BIT = 25  # bits 63:26 are reserved, must be zero (ABI rev 1.58)
# PLATFORM_INFO (ABI spec Table 24 in rev 1.57 "PLATFORM_INFO Field")
PLATFORM_INFO_BITS = {0: "smt_en", 1: "tsme_en", 2: "ecc_en", 3: "rapl_dis",
                      4: "ciphertext_hiding_en", 5: "alias_check_complete", 7: "tio_en"}
# FLAGS bits 4:2 SIGNING_KEY: which key signed the report (ABI spec Table 23)
SIGNING_KEYS = {0: "VCEK", 1: "VLEK", 7: "none"}
# the largest file a report can come in: the sev crate's JSON of one report is ~11 KB
MAX_REPORT_FILE = 64 * 1024
POLICY_BITS = {16: "SMT", 17: "reserved (must be 1)", 18: "MIGRATE_MA", 19: "DEBUG",
               20: "SINGLE_SOCKET", 21: "CXL_ALLOW", 22: "MEM_AES_256_XTS", 23: "RAPL_DIS",
               24: "CIPHERTEXT_HIDING", 25: "PAGE_SWAP_DISABLE"}

# (name, offset, size, kind, first report version that fills it)
# kind: u8/u32/u64 little-endian integers, tcb (TCB_VERSION), bytes.
FIELDS: tuple[tuple[str, int, int, str, int], ...] = (
    ("version", 0x000, 4, "u32", 2),
    ("guest_svn", 0x004, 4, "u32", 2),
    ("policy", 0x008, 8, "u64", 2),
    ("family_id", 0x010, 16, "bytes", 2),
    ("image_id", 0x020, 16, "bytes", 2),
    ("vmpl", 0x030, 4, "u32", 2),
    ("signature_algo", 0x034, 4, "u32", 2),
    ("current_tcb", 0x038, 8, "tcb", 2),
    ("platform_info", 0x040, 8, "u64", 2),
    # bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY (0 = VCEK)
    ("flags", 0x048, 4, "u32", 2),
    ("report_data", 0x050, 64, "bytes", 2),
    ("measurement", 0x090, 48, "bytes", 2),
    ("host_data", 0x0C0, 32, "bytes", 2),
    ("id_key_digest", 0x0E0, 48, "bytes", 2),
    ("author_key_digest", 0x110, 48, "bytes", 2),
    ("report_id", 0x140, 32, "bytes", 2),
    ("report_id_ma", 0x160, 32, "bytes", 2),
    ("reported_tcb", 0x180, 8, "tcb", 2),
    ("cpuid_fam_id", 0x188, 1, "u8", 3),
    ("cpuid_mod_id", 0x189, 1, "u8", 3),
    ("cpuid_step", 0x18A, 1, "u8", 3),
    ("chip_id", 0x1A0, 64, "bytes", 2),
    ("committed_tcb", 0x1E0, 8, "tcb", 2),
    ("current_build", 0x1E8, 1, "u8", 2),
    ("current_minor", 0x1E9, 1, "u8", 2),
    ("current_major", 0x1EA, 1, "u8", 2),
    ("committed_build", 0x1EC, 1, "u8", 2),
    ("committed_minor", 0x1ED, 1, "u8", 2),
    ("committed_major", 0x1EE, 1, "u8", 2),
    ("launch_tcb", 0x1F0, 8, "tcb", 2),
    ("launch_mit_vector", 0x1F8, 8, "u64", 5),
    ("current_mit_vector", 0x200, 8, "u64", 5),
    ("signature_r", SIG_R_OFFSET, SIG_COMPONENT_SIZE, "bytes", 2),
    ("signature_s", SIG_S_OFFSET, SIG_COMPONENT_SIZE, "bytes", 2),
)
FIELD_BY_NAME = {f[0]: f for f in FIELDS}


def field_at(offset: int) -> str:
    """The name of the field covering `offset` (for error messages)."""
    for name, off, size, _, _ in FIELDS:
        if off <= offset < off + size:
            return name
    return "reserved" if offset < REPORT_SIZE else "past the end"


@dataclass(frozen=True)
class Tcb:
    """A TCB_VERSION (ABI spec Table 3): security patch levels (SPL) of each component."""
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None  # Turin only

    COMPONENTS = ("bootloader", "tee", "snp", "microcode")

    @classmethod
    def from_bytes(cls, raw: bytes, turin: bool = False) -> "Tcb":
        if turin:  # FMC, BOOT_LOADER, TEE, SNP, 3 reserved, MICROCODE
            return cls(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
        # BOOT_LOADER, TEE, 4 reserved, SNP, MICROCODE
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    def below(self, minimum: "Tcb") -> list[str]:
        """Components where this TCB is lower than `minimum` (empty: at least minimum)."""
        low = [f"{c} {getattr(self, c)} < {getattr(minimum, c)}" for c in self.COMPONENTS
               if getattr(self, c) < getattr(minimum, c)]
        if minimum.fmc is not None and (self.fmc or 0) < minimum.fmc:
            low.append(f"fmc {self.fmc} < {minimum.fmc}")
        return low

    def as_dict(self) -> dict[str, int]:
        d = {c: getattr(self, c) for c in self.COMPONENTS}
        if self.fmc is not None:
            d["fmc"] = self.fmc
        return d

    def __str__(self) -> str:
        text = f"bl={self.bootloader} tee={self.tee} snp={self.snp} ucode={self.microcode}"
        return text if self.fmc is None else f"fmc={self.fmc} {text}"


def parse_tcb(text: str) -> Tcb:
    """A TCB from 'bl=3,tee=0,snp=20,ucode=209' (names or aliases) or a raw u64 in hex."""
    aliases = {"bl": "bootloader", "boot_loader": "bootloader", "bootloader": "bootloader",
               "tee": "tee", "snp": "snp", "ucode": "microcode", "microcode": "microcode",
               "fmc": "fmc"}
    text = text.strip()
    if "=" not in text:
        try:
            raw = int(text, 16 if text.lower().startswith("0x") else 10)
            return Tcb.from_bytes(raw.to_bytes(8, "little"))
        except (ValueError, OverflowError):
            raise AttestationError(f"bad TCB {text!r}",
                                   hint="write bl=N,tee=N,snp=N,ucode=N or a raw 64-bit value"
                                   ) from None
    values: dict[str, int] = {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 0}
    for part in text.replace(" ", "").split(","):
        key, _, value = part.partition("=")
        if key.lower() not in aliases:
            raise AttestationError(f"bad TCB component {key!r} in {text!r}",
                                   hint=f"known: {', '.join(sorted(set(aliases)))}")
        try:
            n = int(value, 0)
        except ValueError:
            raise AttestationError(f"bad TCB value {value!r} for {key} in {text!r}") from None
        if not 0 <= n <= 255:
            raise AttestationError(f"TCB component {key} must be 0-255, got {n}")
        values[aliases[key.lower()]] = n
    return Tcb(**values)


# Family/model of the CPUID signature -> product (AMD PPR; used by v3+ reports)
def product_from_cpuid(family: int | None, model: int | None) -> str | None:
    if family == 0x19 and model is not None:
        if model <= 0x0F:
            return "Milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:  # Genoa, Bergamo/Siena
            return "Genoa"
    if family == 0x1A:
        return "Turin"
    return None


@dataclass(frozen=True)
class Report:
    """A parsed ATTESTATION_REPORT; `raw` is the exact 1184 bytes (signed part: raw[:0x2A0])."""
    raw: bytes
    fields: dict[str, Any]
    source: str = "report"

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(name)

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signature_rs(self) -> tuple[int, int]:
        return (int.from_bytes(self.fields["signature_r"], "little"),
                int.from_bytes(self.fields["signature_s"], "little"))

    @property
    def signing_key(self) -> str:
        """FLAGS.SIGNING_KEY (bits 4:2): 'VCEK', 'VLEK', 'none', or 'reserved (N)'."""
        value = self.fields["flags"] >> 2 & 7
        return SIGNING_KEYS.get(value, f"reserved ({value})")

    @property
    def debug_allowed(self) -> bool:
        return bool(self.fields["policy"] >> POLICY_DEBUG_BIT & 1)

    @property
    def product(self) -> str | None:
        """The product named by the CPUID fields (version 3 and later), else None."""
        return product_from_cpuid(self.fields.get("cpuid_fam_id"), self.fields.get("cpuid_mod_id"))

    def tcb(self, name: str, product: str | None = None) -> Tcb:
        off = FIELD_BY_NAME[name][1]
        turin = (product or self.product or "").lower() == "turin"
        return Tcb.from_bytes(self.raw[off:off + 8], turin=turin)

    def as_dict(self, product: str | None = None) -> dict[str, Any]:
        """Plain data (bytes as hex) for --json output."""
        out: dict[str, Any] = {}
        for name, value in self.fields.items():
            if FIELD_BY_NAME[name][3] == "tcb":
                out[name] = self.tcb(name, product).as_dict()
            elif isinstance(value, bytes):
                out[name] = value.hex()
            else:
                out[name] = value
        return out


def _decode(raw: bytes, source: str) -> Report:
    version = struct.unpack_from("<I", raw, 0)[0]
    if version < 2:
        raise AttestationError(
            f"{source}: unsupported report version {version} at offset 0x000",
            hint="SEV-SNP reports are version 2 or later; is this a SEV/SEV-ES report or "
                 "another file?")
    if version > 0xFF:
        raise AttestationError(f"{source}: implausible report version {version:#x} at offset "
                               "0x000: not an SNP attestation report (wrong byte order or file?)")
    fields: dict[str, Any] = {}
    for name, off, size, kind, since in FIELDS:
        if version < since:
            continue
        chunk = raw[off:off + size]
        if kind == "bytes":
            fields[name] = chunk
        else:  # u8/u32/u64 and the raw TCB value
            fields[name] = int.from_bytes(chunk, "little")
    return Report(raw=bytes(raw), fields=fields, source=source)


def parse_binary(data: bytes, source: str = "report") -> Report:
    """A report from its binary form (or a MSG_REPORT_RSP carrying one)."""
    if len(data) == REPORT_SIZE + MSG_REPORT_RSP_HEADER and \
            struct.unpack_from("<I", data, 4)[0] == REPORT_SIZE:
        status = struct.unpack_from("<I", data, 0)[0]
        if status != 0:
            raise AttestationError(f"{source}: MSG_REPORT_RSP status {status:#x} at offset 0x000: "
                                   "the firmware did not produce a report")
        data = data[MSG_REPORT_RSP_HEADER:]
    if len(data) < REPORT_SIZE:
        raise AttestationError(
            f"{source}: truncated report: {len(data)} bytes, expected {REPORT_SIZE} "
            f"(data ends at offset {len(data):#05x}, inside '{field_at(len(data))}')")
    if len(data) > REPORT_SIZE:
        raise AttestationError(
            f"{source}: {len(data)} bytes, expected {REPORT_SIZE}: unexpected data from offset "
            f"{REPORT_SIZE:#05x}", hint="pass the bare 1184-byte ATTESTATION_REPORT")
    return _decode(data, source)


def parse_hex(text: str, source: str = "report") -> Report:
    """A report written as hex text (whitespace and a 0x prefix allowed)."""
    compact = "".join(text.split())
    compact = compact[2:] if compact[:2].lower() == "0x" else compact
    for i, ch in enumerate(compact):
        if ch not in "0123456789abcdefABCDEF":
            raise AttestationError(f"{source}: not hex: {ch!r} at hex digit {i} "
                                   f"(report offset {i // 2:#05x})")
    if len(compact) % 2:
        raise AttestationError(f"{source}: odd number of hex digits ({len(compact)}): "
                               f"the last byte at offset {len(compact) // 2:#05x} is incomplete")
    return parse_binary(bytes.fromhex(compact), source)


# The Rust `sev` crate's serde form (AttestationReport derives Serialize): field
# name -> (report offset, size). Byte arrays are JSON arrays of numbers, the
# TCB versions objects, the signature {r, s, _reserved}.
_JSON_LAYOUT: dict[str, tuple[int, int]] = {
    "version": (0x000, 4), "guest_svn": (0x004, 4), "policy": (0x008, 8),
    "family_id": (0x010, 16), "image_id": (0x020, 16), "vmpl": (0x030, 4),
    "sig_algo": (0x034, 4), "current_tcb": (0x038, 8), "plat_info": (0x040, 8),
    "_author_key_en": (0x048, 4), "_reserved_0": (0x04C, 4), "report_data": (0x050, 64),
    "measurement": (0x090, 48), "host_data": (0x0C0, 32), "id_key_digest": (0x0E0, 48),
    "author_key_digest": (0x110, 48), "report_id": (0x140, 32), "report_id_ma": (0x160, 32),
    "reported_tcb": (0x180, 8), "_reserved_1": (0x188, 24), "chip_id": (0x1A0, 64),
    "committed_tcb": (0x1E0, 8), "current_build": (0x1E8, 1), "current_minor": (0x1E9, 1),
    "current_major": (0x1EA, 1), "_reserved_2": (0x1EB, 1), "committed_build": (0x1EC, 1),
    "committed_minor": (0x1ED, 1), "committed_major": (0x1EE, 1), "_reserved_3": (0x1EF, 1),
    "launch_tcb": (0x1F0, 8), "_reserved_4": (0x1F8, 168), "signature": (0x2A0, 512),
    # later sev crate releases
    "cpuid_fam_id": (0x188, 1), "cpuid_mod_id": (0x189, 1), "cpuid_step": (0x18A, 1),
    "launch_mit_vector": (0x1F8, 8), "current_mit_vector": (0x200, 8),
    "key_info": (0x048, 4),
}
_JSON_TCB_KEYS = {"bootloader", "boot_loader", "tee", "snp", "microcode", "fmc", "_reserved"}


def _json_bytes(value: Any, key: str, size: int, off: int, source: str) -> bytes:
    if isinstance(value, str):  # hex-string serializers
        try:
            raw = bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            raise AttestationError(f"{source}: '{key}' is not hex (report offset {off:#05x})") \
                from None
    elif isinstance(value, list) and all(isinstance(b, int) and not isinstance(b, bool)
                                         and 0 <= b <= 255 for b in value):
        raw = bytes(value)
    else:
        raise AttestationError(f"{source}: '{key}' must be an array of bytes "
                               f"(report offset {off:#05x})")
    if len(raw) != size:
        raise AttestationError(f"{source}: '{key}' has {len(raw)} bytes, expected {size} "
                               f"(report offset {off:#05x})")
    return raw


def _json_int(value: Any, key: str, size: int, off: int, source: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AttestationError(f"{source}: '{key}' must be an integer, got {value!r} "
                               f"(report offset {off:#05x})")
    try:
        return value.to_bytes(size, "little")
    except OverflowError:
        raise AttestationError(f"{source}: '{key}' = {value} does not fit in {size} bytes "
                               f"(report offset {off:#05x})") from None


def _json_tcb(value: Any, key: str, off: int, source: str) -> bytes:
    if isinstance(value, int) and not isinstance(value, bool):
        return _json_int(value, key, 8, off, source)
    if not isinstance(value, dict):
        raise AttestationError(f"{source}: '{key}' must be a TCB object "
                               f"(report offset {off:#05x})")
    unknown = set(value) - _JSON_TCB_KEYS
    if unknown:
        raise AttestationError(f"{source}: '{key}' has unknown field(s) {sorted(unknown)}")
    out = bytearray(8)
    comps: dict[str, Any] = {k: value.get(k)
             for k in ("fmc", "bootloader", "boot_loader", "tee", "snp", "microcode")}
    bl = comps["bootloader"] if comps["bootloader"] is not None else comps["boot_loader"]
    for name, v in (("bootloader", bl), ("tee", comps["tee"]), ("snp", comps["snp"]),
                    ("microcode", comps["microcode"])):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 255:
            raise AttestationError(f"{source}: '{key}.{name}' must be 0-255, got {v!r} "
                                   f"(report offset {off:#05x})")
    if comps["fmc"] is not None:  # Turin layout
        out[0], out[1], out[2], out[3], out[7] = comps["fmc"], bl, comps["tee"], comps["snp"], \
            comps["microcode"]
    else:
        out[0], out[1], out[6], out[7] = bl, comps["tee"], comps["snp"], comps["microcode"]
        reserved = value.get("_reserved")
        if reserved is not None:
            out[2:6] = _json_bytes(reserved, f"{key}._reserved", 4, off + 2, source)
    return bytes(out)


def report_from_json(data: dict[str, Any], source: str = "report") -> Report:
    """A report from the Rust `sev` crate's serde JSON; rebuilt byte for byte."""
    if not isinstance(data, dict):
        raise AttestationError(f"{source}: expected a JSON object (the sev crate's "
                               "AttestationReport)")
    buf = bytearray(REPORT_SIZE)
    for key, value in data.items():
        if key not in _JSON_LAYOUT:
            near = difflib.get_close_matches(key, list(_JSON_LAYOUT), n=1)
            also = f" (did you mean '{near[0]}'?)" if near else ""
            raise AttestationError(f"{source}: unknown report field '{key}'{also}")
        off, size = _JSON_LAYOUT[key]
        if value is None:  # Option::None of later sev crates: the field is absent
            continue
        if key.endswith("_tcb"):
            chunk = _json_tcb(value, key, off, source)
        elif key == "signature":
            if not isinstance(value, dict) or not {"r", "s"} <= set(value):
                raise AttestationError(f"{source}: 'signature' must be an object with r and s "
                                       f"(report offset {off:#05x})")
            chunk = (_json_bytes(value["r"], "signature.r", 72, SIG_R_OFFSET, source)
                     + _json_bytes(value["s"], "signature.s", 72, SIG_S_OFFSET, source)
                     + (_json_bytes(value["_reserved"], "signature._reserved", 368, 0x330, source)
                        if value.get("_reserved") is not None else bytes(368)))
        elif isinstance(value, int) and not isinstance(value, bool):
            chunk = _json_int(value, key, size, off, source)
        else:
            chunk = _json_bytes(value, key, size, off, source)
        buf[off:off + size] = chunk
    for required in ("version", "measurement", "signature", "chip_id", "reported_tcb", "policy"):
        if required not in data:
            raise AttestationError(f"{source}: missing report field '{required}' "
                                   f"(report offset {_JSON_LAYOUT[required][0]:#05x})")
    return _decode(bytes(buf), source)


def parse_bytes(data: bytes, source: str = "report") -> Report:
    """Any accepted form, told apart by content: JSON object, hex text, or binary."""
    head = data.lstrip()[:1]
    if head == b"{":
        try:
            obj = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            where = f" (line {exc.lineno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) \
                else ""
            raise AttestationError(f"{source}: looks like JSON but does not parse{where}") \
                from None
        except RecursionError:
            raise AttestationError(f"{source}: JSON nested too deeply: not a report") from None
        return report_from_json(obj, source)
    if len(data) not in (REPORT_SIZE, REPORT_SIZE + MSG_REPORT_RSP_HEADER):
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            text = None
        if text is not None and text.strip():
            try:
                return parse_hex(text, source)
            except AttestationError as exc:
                raise AttestationError(
                    f"{exc.message} ({len(data)} bytes: neither a {REPORT_SIZE}-byte binary "
                    "report nor hex text nor sev JSON)") from None
    return parse_binary(data, source)


def read_bounded(path: str | Path, limit: int, what: str) -> bytes:
    """A file's bytes, refusing directories and anything larger than `limit` (so that
    /dev/zero or a disk image given by mistake fails at once instead of filling memory)."""
    p = Path(path)
    if p.is_dir():
        raise AttestationError(f"{what} {p} is a directory, not a file")
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise AttestationError(f"{what} {p} does not exist") from None
    except OSError as exc:
        raise AttestationError(f"cannot read {what} {p}: {exc.strerror}") from None
    if len(data) > limit:
        raise AttestationError(f"{what} {p} is larger than {limit} bytes: not a {what}")
    return data


def load(path: str | Path) -> Report:
    """Read a report file (binary, hex text or sev-crate JSON), at most MAX_REPORT_FILE bytes."""
    return parse_bytes(read_bounded(path, MAX_REPORT_FILE, "report file"), str(path))
