//! The probe on the wire: a header the kernel parses, the control state the
//! election advertises, and an HMAC-SHA256 over both under the shared key.
//!
//! Layout (all multi-byte fields big-endian):
//! ```text
//!  0..24  ProbeHeader (agent-ebpf): magic, version, kind, link, flags, token, seq, ctl_gen
//! 24      role            25 priority        26 flags        27 witness_reach
//!         (flags: 1 eligible, 2 want_takeover, 4 replica_ok)
//! 28      witness_count   29 links_up        30..32 semi-sync (kind, episode:
//!         0 none, 1 effective, 2 asynchronous, 3 acking, 4 not acking and
//!         noted; the episode is the primary's announcement, 0 when none)
//! 32..40  epoch
//! 40..44  router_id
//! 44..60  node name (UTF-8, zero padded)
//! 60..92  HMAC-SHA256(key, bytes 0..60 with seq zeroed)
//! ```
//! `seq` is left out of the MAC so the real-time sender can stamp each probe
//! without recomputing it; it only feeds loss counters.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use agent_ebpf::{ProbeHeader, PROBE_HEADER_LEN, PROBE_KIND_PROBE, PROBE_MAGIC, PROBE_VERSION};
use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::decisions::database::SemisyncAdvert;
use crate::decisions::election::{Control, Role};

type HmacSha256 = hmac::Hmac<Sha256>;

pub const PROBE_LEN: usize = 92;
const BODY: usize = PROBE_HEADER_LEN;
const MAC_AT: usize = 60;
const NAME_LEN: usize = 16;
const SEQ_AT: usize = 16;
const SEMISYNC_AT: usize = 30;

const FLAG_ELIGIBLE: u8 = 1;
const FLAG_WANT_TAKEOVER: u8 = 2;
const FLAG_REPLICA_OK: u8 = 4;
const FLAG_FRESH_TAKEOVER: u8 = 8;

/// The shared secret both agents sign their probes with.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source} (create it with: head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > {path}; chmod 600 {path})")]
    Read { path: PathBuf, source: io::Error },
    #[error("key file {path} is readable or writable by group/other (mode {mode:o}): run chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "key file {path} holds {len} bytes; at least 16 are needed (32 random bytes recommended)"
    )]
    TooShort { path: PathBuf, len: usize },
}

impl Key {
    /// Reads the key file, refusing one that group or other may read.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(read_err)?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let bytes = fs::read(path).map_err(read_err)?;
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < 16 {
            return Err(KeyError::TooShort {
                path: path.to_owned(),
                len: trimmed.len(),
            });
        }
        Ok(Key(trimmed.to_vec()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Key {
        Key(bytes.to_vec())
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length.
        <HmacSha256 as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }
}

/// A verified probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub link: u8,
    pub token: u64,
    pub seq: u32,
    pub ctl_gen: u32,
    pub node: String,
    pub control: Control,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("probe of {0} bytes, expected {PROBE_LEN}")]
    Length(usize),
    #[error("not an ha-agent probe (bad magic or version)")]
    NotProbe,
    #[error("HMAC does not verify: the peer uses another key, or the packet was forged/damaged")]
    BadMac,
    #[error("unknown role value {0}")]
    BadRole(u8),
    #[error("unknown semi-sync state {0}")]
    BadSemisync(u8),
}

/// Builds a signed probe; the sender then stamps `seq` with [`set_seq`].
pub fn encode(
    key: &Key,
    link: u8,
    token: u64,
    ctl_gen: u32,
    node: &str,
    c: &Control,
) -> [u8; PROBE_LEN] {
    let mut b = [0u8; PROBE_LEN];
    let header = ProbeHeader {
        magic: PROBE_MAGIC,
        version: PROBE_VERSION,
        kind: PROBE_KIND_PROBE,
        link,
        flags: 0,
        token: token.to_be_bytes(),
        seq: [0; 4],
        ctl_gen: ctl_gen.to_be_bytes(),
    };
    b[0..4].copy_from_slice(&header.magic);
    b[4] = header.version;
    b[5] = header.kind;
    b[6] = header.link;
    b[7] = header.flags;
    b[8..16].copy_from_slice(&header.token);
    b[16..20].copy_from_slice(&header.seq);
    b[20..24].copy_from_slice(&header.ctl_gen);
    b[BODY] = c.role.to_wire();
    b[BODY + 1] = c.priority;
    b[BODY + 2] = (if c.eligible { FLAG_ELIGIBLE } else { 0 })
        | (if c.want_takeover {
            FLAG_WANT_TAKEOVER
        } else {
            0
        })
        | (if c.replica_ok { FLAG_REPLICA_OK } else { 0 })
        | (if c.fresh_takeover {
            FLAG_FRESH_TAKEOVER
        } else {
            0
        });
    b[BODY + 3] = c.witness_reach;
    b[BODY + 4] = c.witness_count;
    b[BODY + 5] = c.links_up;
    b[SEMISYNC_AT..SEMISYNC_AT + 2].copy_from_slice(&c.semisync.to_wire());
    b[32..40].copy_from_slice(&c.epoch.to_be_bytes());
    b[40..44].copy_from_slice(&c.router_id.to_be_bytes());
    let name = node.as_bytes();
    let n = name.len().min(NAME_LEN);
    b[44..44 + n].copy_from_slice(&name[..n]);
    let mut mac = key.mac();
    mac.update(&b[..MAC_AT]);
    b[MAC_AT..].copy_from_slice(&mac.finalize().into_bytes());
    b
}

/// Stamps the per-link sequence number (not covered by the MAC).
pub fn set_seq(probe: &mut [u8; PROBE_LEN], seq: u32) {
    probe[SEQ_AT..SEQ_AT + 4].copy_from_slice(&seq.to_be_bytes());
}

/// Parses and verifies a probe. Never panics on any input.
pub fn decode(key: &Key, b: &[u8]) -> Result<Probe, DecodeError> {
    if b.len() != PROBE_LEN {
        return Err(DecodeError::Length(b.len()));
    }
    if b[0..4] != PROBE_MAGIC || b[4] != PROBE_VERSION || b[5] != PROBE_KIND_PROBE {
        return Err(DecodeError::NotProbe);
    }
    let mut signed = [0u8; MAC_AT];
    signed.copy_from_slice(&b[..MAC_AT]);
    signed[SEQ_AT..SEQ_AT + 4].fill(0);
    let mut mac = key.mac();
    mac.update(&signed);
    mac.verify_slice(&b[MAC_AT..])
        .map_err(|_| DecodeError::BadMac)?;
    let be32 = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let role = Role::from_wire(b[BODY]).ok_or(DecodeError::BadRole(b[BODY]))?;
    let semisync = SemisyncAdvert::from_wire([b[SEMISYNC_AT], b[SEMISYNC_AT + 1]])
        .ok_or(DecodeError::BadSemisync(b[SEMISYNC_AT]))?;
    let mut epoch = [0u8; 8];
    epoch.copy_from_slice(&b[32..40]);
    let mut token = [0u8; 8];
    token.copy_from_slice(&b[8..16]);
    let name = &b[44..44 + NAME_LEN];
    let name_len = name.iter().position(|c| *c == 0).unwrap_or(NAME_LEN);
    Ok(Probe {
        link: b[6],
        token: u64::from_be_bytes(token),
        seq: be32(16),
        ctl_gen: be32(20),
        node: String::from_utf8_lossy(&name[..name_len]).into_owned(),
        control: Control {
            role,
            priority: b[BODY + 1],
            eligible: b[BODY + 2] & FLAG_ELIGIBLE != 0,
            want_takeover: b[BODY + 2] & FLAG_WANT_TAKEOVER != 0,
            replica_ok: b[BODY + 2] & FLAG_REPLICA_OK != 0,
            fresh_takeover: b[BODY + 2] & FLAG_FRESH_TAKEOVER != 0,
            witness_reach: b[BODY + 3],
            witness_count: b[BODY + 4],
            links_up: b[BODY + 5],
            epoch: u64::from_be_bytes(epoch),
            router_id: be32(40),
            semisync,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn control() -> Control {
        Control {
            role: Role::Master,
            priority: 101,
            epoch: 0x0102_0304_0506_0708,
            eligible: true,
            want_takeover: false,
            witness_reach: 1,
            witness_count: 1,
            links_up: 0b11,
            router_id: 0xC633_640B,
            replica_ok: true,
            fresh_takeover: true,
            semisync: SemisyncAdvert::Asynchronous { episode: 0xA7 },
        }
    }

    #[test]
    fn round_trip_and_seq_is_outside_the_mac() {
        let key = Key::from_bytes(b"0123456789abcdef0123456789abcdef");
        let mut p = encode(&key, 1, 0xAABB_CCDD_EEFF_0011, 7, "server1", &control());
        set_seq(&mut p, 12345);
        let d = decode(&key, &p).unwrap();
        assert_eq!(d.control, control());
        assert_eq!(
            (d.link, d.token, d.seq, d.ctl_gen),
            (1, 0xAABB_CCDD_EEFF_0011, 12345, 7)
        );
        assert_eq!(d.node, "server1");
        // Each flag travels on its own.
        for replica_ok in [false, true] {
            for want_takeover in [false, true] {
                let c = Control {
                    replica_ok,
                    want_takeover,
                    eligible: !replica_ok,
                    ..control()
                };
                let p = encode(&key, 0, 1, 1, "s", &c);
                assert_eq!(decode(&key, &p).unwrap().control, c);
            }
        }
        // Every semi-sync state travels, with its episode.
        for semisync in [
            SemisyncAdvert::None,
            SemisyncAdvert::Effective,
            SemisyncAdvert::Asynchronous { episode: 0 },
            SemisyncAdvert::Asynchronous { episode: 255 },
            SemisyncAdvert::Acking { noted: 0 },
            SemisyncAdvert::Acking { noted: 3 },
            SemisyncAdvert::AsyncNoted { episode: 9 },
        ] {
            let c = Control {
                semisync,
                ..control()
            };
            let p = encode(&key, 0, 1, 1, "s", &c);
            assert_eq!(&p[30..32], &semisync.to_wire());
            assert_eq!(decode(&key, &p).unwrap().control, c);
        }
    }

    #[test]
    fn header_matches_the_kernel_struct() {
        let key = Key::from_bytes(b"0123456789abcdef");
        let p = encode(&key, 2, 5, 9, "s", &control());
        assert_eq!(&p[0..4], &PROBE_MAGIC);
        assert_eq!(PROBE_HEADER_LEN, 24);
        // The kernel reads the token as a native u64 from the wire bytes.
        let wire = u64::from_ne_bytes(p[8..16].try_into().unwrap());
        assert_eq!(wire, crate::drivers::ebpf::token_to_kernel(5));
    }

    #[test]
    fn any_flipped_bit_outside_seq_fails() {
        let key = Key::from_bytes(b"0123456789abcdef");
        let p = encode(&key, 0, 1, 1, "server1", &control());
        for i in 0..PROBE_LEN {
            if (SEQ_AT..SEQ_AT + 4).contains(&i) {
                continue;
            }
            let mut q = p;
            q[i] ^= 0x40;
            assert!(decode(&key, &q).is_err(), "byte {i} flipped still verifies");
        }
        let other = Key::from_bytes(b"another key of 16+");
        assert_eq!(decode(&other, &p), Err(DecodeError::BadMac));
    }

    #[test]
    fn garbage_never_panics() {
        let key = Key::from_bytes(b"0123456789abcdef");
        for len in [0usize, 1, 23, 24, 91, 93, 1500] {
            assert!(decode(&key, &vec![0xFF; len]).is_err());
        }
        let mut p = encode(&key, 0, 1, 1, "x", &control());
        p[BODY] = 9; // bad role, but the MAC is recomputed below
        let mut mac = key.mac();
        mac.update(&p[..MAC_AT]);
        p[MAC_AT..].copy_from_slice(&mac.finalize().into_bytes());
        assert_eq!(decode(&key, &p), Err(DecodeError::BadRole(9)));
        // An unknown semi-sync state in a signed probe is refused, not guessed.
        let mut p = encode(&key, 0, 1, 1, "x", &control());
        p[SEMISYNC_AT] = 5;
        let mut mac = key.mac();
        mac.update(&p[..MAC_AT]);
        p[MAC_AT..].copy_from_slice(&mac.finalize().into_bytes());
        assert_eq!(decode(&key, &p), Err(DecodeError::BadSemisync(5)));
    }

    #[test]
    fn key_file_permissions_are_enforced() {
        let dir = std::env::temp_dir().join(format!("ha-key-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        fs::write(&path, "00112233445566778899aabbccddeeff\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Key::load(&path),
            Err(KeyError::Permissions { mode: 0o644, .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Key::load(&path).unwrap().0.len(), 32, "newline trimmed");
        fs::write(&path, "short").unwrap();
        assert!(matches!(
            Key::load(&path),
            Err(KeyError::TooShort { len: 5, .. })
        ));
        assert!(matches!(
            Key::load(&dir.join("missing")),
            Err(KeyError::Read { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
