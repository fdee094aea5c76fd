//! The probe on the wire (version 2): a header the kernel parses and
//! authenticates, the control state the election advertises, and an
//! HMAC-SHA256 over everything under the shared key.
//!
//! Layout (all multi-byte fields big-endian unless said):
//! ```text
//!   0..48  ProbeHeader (agent-ebpf): magic "HAP2", version 2, kind, link,
//!          flags, sender id, ctl_gen, token, seq, boot,
//!          tag = SipHash-2-4(kernel key, bytes 0..40) (little-endian)
//!  48..56  echo: the peer's session token this sender answers (0 = none)
//!  56      role           57 priority      58 flags       59 witness_reach
//!          (flags: 1 eligible, 2 want_takeover, 4 replica_ok, 8 fresh_takeover)
//!  60      witness_count  61 links_up      62 witness_links
//!  63      reserved
//!  64..72  epoch
//!  72..74  lateness: the sender's worst slot in the last second, 100 us units
//!  74..76  lease_ms: how long the sender's kernel serves its VIPs without it
//!  76..78  semi-sync (kind, episode: 0 none, 1 effective, 2 asynchronous,
//!          3 acking, 4 not acking and noted; the episode is the primary's
//!          announcement, 0 when none)
//!  78..84  reserved
//!  84..100 node name (UTF-8, zero padded)
//! 100..132 HMAC-SHA256(key, bytes 0..100)
//! ```
//! Freshness and order: `seq` (the sender's slot) is under both MACs and
//! grows strictly per link, `boot` orders the sender's sessions, and `echo`
//! proves a new session was made after it heard our current one (see
//! `decisions::session`). The kernel checks the tag, the sender id, the
//! link and `seq` on every probe; userspace checks the HMAC of the probes
//! the kernel passes up.
//!
//! The async side builds a [`Template`] per link whenever the control state
//! changes; the real-time senders only stamp `seq` and `lateness` and sign
//! ([`Signer::finish`]): no allocation, no lock.

use std::path::{Path, PathBuf};

use agent_ebpf::siphash::siphash24;
use agent_ebpf::{PROBE_HEADER_LEN, PROBE_KIND_PROBE, PROBE_MAGIC, PROBE_VERSION, TAGGED_LEN};
use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::decisions::database::SemisyncAdvert;
use crate::decisions::election::{Control, Role};
use crate::operator::secret_file::{self, SecretFileError};

type HmacSha256 = hmac::Hmac<Sha256>;

pub const PROBE_LEN: usize = 132;
const MAC_AT: usize = 100;
pub const NAME_LEN: usize = 16;

const SENDER_AT: usize = 8;
const CTL_GEN_AT: usize = 12;
const TOKEN_AT: usize = 16;
const SEQ_AT: usize = 24;
const BOOT_AT: usize = 32;
const TAG_AT: usize = 40;
const ECHO_AT: usize = 48;
const ROLE_AT: usize = 56;
const EPOCH_AT: usize = 64;
const LATENESS_AT: usize = 72;
const LEASE_AT: usize = 74;
const SEMISYNC_AT: usize = 76;
const NAME_AT: usize = 84;

const FLAG_ELIGIBLE: u8 = 1;
const FLAG_WANT_TAKEOVER: u8 = 2;
const FLAG_REPLICA_OK: u8 = 4;
const FLAG_FRESH_TAKEOVER: u8 = 8;

/// Derivation label of the kernel's SipHash key: the kernel never sees the
/// shared key itself.
const KERNEL_KEY_LABEL: &[u8] = b"ha-agent probe tag v2";

impl Role {
    pub fn to_wire(self) -> u8 {
        match self {
            Role::Init => 0,
            Role::Backup => 1,
            Role::Master => 2,
            Role::Fault => 3,
        }
    }
    pub fn from_wire(b: u8) -> Option<Role> {
        Some(match b {
            0 => Role::Init,
            1 => Role::Backup,
            2 => Role::Master,
            3 => Role::Fault,
            _ => return None,
        })
    }
}

/// The shared secret both agents sign their probes with.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Length of the shared key: 32 bytes, written as 64 hex digits.
pub const KEY_LEN: usize = 32;

/// How to make a key file; part of the key errors.
const MAKE_KEY: &str = "(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > FILE), the same file on both servers";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path} does not exist: make one with: {MAKE_KEY}")]
    Missing { path: PathBuf },
    #[error("key file: {0}")]
    File(SecretFileError),
    #[error("key file {path} must hold {} hex digits (a {KEY_LEN}-byte key) and nothing else, but {found}; make one with: {MAKE_KEY}", KEY_LEN * 2)]
    NotHex { path: PathBuf, found: String },
    #[error("key file {path} holds the same byte {KEY_LEN} times, which is not a random key; make one with: {MAKE_KEY}")]
    NotRandom { path: PathBuf },
}

impl Key {
    /// Reads the key file: 64 hex digits (surrounding whitespace ignored),
    /// in a root-only file (see [`crate::operator::secret_file`]).
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let bytes = secret_file::read(path).map_err(|e| {
            if e.is_missing() {
                KeyError::Missing {
                    path: path.to_owned(),
                }
            } else {
                KeyError::File(e)
            }
        })?;
        let text = bytes.trim_ascii();
        let mut key = vec![0u8; KEY_LEN];
        if let Err(e) = hex::decode_to_slice(text, &mut key) {
            let found = match e {
                hex::FromHexError::InvalidHexCharacter { index, .. } => {
                    format!("character {} is not a hex digit", index + 1)
                }
                _ => format!("it holds {} characters", text.len()),
            };
            return Err(KeyError::NotHex {
                path: path.to_owned(),
                found,
            });
        }
        if key.iter().all(|b| *b == key[0]) {
            return Err(KeyError::NotRandom {
                path: path.to_owned(),
            });
        }
        Ok(Key(key))
    }

    pub fn from_bytes(bytes: &[u8]) -> Key {
        Key(bytes.to_vec())
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The two MAC keys of the probes, derived once from the shared key.
#[derive(Clone)]
pub struct Signer {
    hmac: HmacSha256,
    sip: (u64, u64),
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    pub fn new(key: &Key) -> Signer {
        // HMAC accepts keys of any length.
        let hmac = <HmacSha256 as KeyInit>::new_from_slice(key.bytes())
            .expect("HMAC takes any key length");
        let mut derive = hmac.clone();
        derive.update(KERNEL_KEY_LABEL);
        let d = derive.finalize().into_bytes();
        let half = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&d[at..at + 8]);
            u64::from_le_bytes(w)
        };
        Signer {
            hmac,
            sip: (half(0), half(8)),
        }
    }

    /// The kernel's SipHash key (k0, k1).
    pub fn kernel_key(&self) -> (u64, u64) {
        self.sip
    }

    fn tag(&self, b: &[u8; PROBE_LEN]) -> [u8; 8] {
        let mut tagged = [0u8; TAGGED_LEN];
        tagged.copy_from_slice(&b[..TAGGED_LEN]);
        siphash24(self.sip.0, self.sip.1, &tagged).to_le_bytes()
    }

    /// The probe to send for `seq`: stamps it and the sender's lateness
    /// (100 us units) into the template, then the tag and the HMAC. Real-time
    /// safe: no allocation, no lock, no system call.
    pub fn finish(&self, t: &Template, seq: u64, lateness: u16) -> [u8; PROBE_LEN] {
        let mut b = t.0;
        b[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_be_bytes());
        b[LATENESS_AT..LATENESS_AT + 2].copy_from_slice(&lateness.to_be_bytes());
        let tag = self.tag(&b);
        b[TAG_AT..TAG_AT + 8].copy_from_slice(&tag);
        let mut mac = self.hmac.clone();
        mac.update(&b[..MAC_AT]);
        b[MAC_AT..].copy_from_slice(&mac.finalize().into_bytes());
        b
    }
}

/// Who sends: the parts of a probe that stay for the whole session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The sender's identity: its first link's address.
    pub sender: std::net::Ipv4Addr,
    pub token: u64,
    pub boot: u64,
    pub node: String,
    /// How long the sender's kernel serves its VIPs without it (its lease).
    pub lease_ms: u16,
}

/// A probe for one link with everything but `seq`, `lateness` and the MACs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Template(pub [u8; PROBE_LEN]);

impl Template {
    pub fn new(origin: &Origin, link: u8, ctl_gen: u32, echo: u64, c: &Control) -> Template {
        let mut b = [0u8; PROBE_LEN];
        b[0..4].copy_from_slice(&PROBE_MAGIC);
        b[4] = PROBE_VERSION;
        b[5] = PROBE_KIND_PROBE;
        b[6] = link;
        b[7] = 0;
        b[SENDER_AT..SENDER_AT + 4].copy_from_slice(&origin.sender.octets());
        b[CTL_GEN_AT..CTL_GEN_AT + 4].copy_from_slice(&ctl_gen.to_be_bytes());
        b[TOKEN_AT..TOKEN_AT + 8].copy_from_slice(&origin.token.to_be_bytes());
        b[BOOT_AT..BOOT_AT + 8].copy_from_slice(&origin.boot.to_be_bytes());
        b[ECHO_AT..ECHO_AT + 8].copy_from_slice(&echo.to_be_bytes());
        b[ROLE_AT] = c.role.to_wire();
        b[ROLE_AT + 1] = c.priority;
        b[ROLE_AT + 2] = flag(c.eligible, FLAG_ELIGIBLE)
            | flag(c.want_takeover, FLAG_WANT_TAKEOVER)
            | flag(c.replica_ok, FLAG_REPLICA_OK)
            | flag(c.fresh_takeover, FLAG_FRESH_TAKEOVER);
        b[ROLE_AT + 3] = c.witness_reach;
        b[ROLE_AT + 4] = c.witness_count;
        b[ROLE_AT + 5] = c.links_up;
        b[ROLE_AT + 6] = c.witness_links;
        b[EPOCH_AT..EPOCH_AT + 8].copy_from_slice(&c.epoch.to_be_bytes());
        b[LEASE_AT..LEASE_AT + 2].copy_from_slice(&origin.lease_ms.to_be_bytes());
        b[SEMISYNC_AT..SEMISYNC_AT + 2].copy_from_slice(&c.semisync.to_wire());
        let name = origin.node.as_bytes();
        let n = name.len().min(NAME_LEN);
        b[NAME_AT..NAME_AT + n].copy_from_slice(&name[..n]);
        Template(b)
    }
}

fn flag(on: bool, bit: u8) -> u8 {
    if on {
        bit
    } else {
        0
    }
}

/// A verified probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub link: u8,
    pub sender: std::net::Ipv4Addr,
    pub ctl_gen: u32,
    pub token: u64,
    pub seq: u64,
    pub boot: u64,
    pub echo: u64,
    /// The sender's worst slot lateness in the last second.
    pub lateness: std::time::Duration,
    pub lease_ms: u16,
    pub node: String,
    pub control: Control,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("probe of {0} bytes, expected {PROBE_LEN}")]
    Length(usize),
    #[error("not an ha-agent probe of wire version {PROBE_VERSION} (bad magic, version or kind)")]
    NotProbe,
    #[error("MAC does not verify: the peer uses another key, or the packet was forged/damaged")]
    BadMac,
    #[error("unknown role value {0}")]
    BadRole(u8),
    #[error("unknown semi-sync state {0}")]
    BadSemisync(u8),
}

/// Parses and verifies a probe (both MACs). Never panics on any input.
pub fn decode(signer: &Signer, b: &[u8]) -> Result<Probe, DecodeError> {
    let b: &[u8; PROBE_LEN] = b.try_into().map_err(|_| DecodeError::Length(b.len()))?;
    if b[0..4] != PROBE_MAGIC || b[4] != PROBE_VERSION || b[5] != PROBE_KIND_PROBE {
        return Err(DecodeError::NotProbe);
    }
    let mut mac = signer.hmac.clone();
    mac.update(&b[..MAC_AT]);
    mac.verify_slice(&b[MAC_AT..])
        .map_err(|_| DecodeError::BadMac)?;
    // A valid HMAC with a bad tag is a broken sender: refuse it like the kernel.
    if signer.tag(b) != b[TAG_AT..TAG_AT + 8] {
        return Err(DecodeError::BadMac);
    }
    debug_assert_eq!(TAG_AT + 8, PROBE_HEADER_LEN);
    let be16 = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let be32 = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let be64 = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_be_bytes(w)
    };
    let role = Role::from_wire(b[ROLE_AT]).ok_or(DecodeError::BadRole(b[ROLE_AT]))?;
    let semisync = SemisyncAdvert::from_wire([b[SEMISYNC_AT], b[SEMISYNC_AT + 1]])
        .ok_or(DecodeError::BadSemisync(b[SEMISYNC_AT]))?;
    let name = &b[NAME_AT..NAME_AT + NAME_LEN];
    let name_len = name.iter().position(|c| *c == 0).unwrap_or(NAME_LEN);
    let flags = b[ROLE_AT + 2];
    Ok(Probe {
        link: b[6],
        sender: std::net::Ipv4Addr::from(be32(SENDER_AT)),
        ctl_gen: be32(CTL_GEN_AT),
        token: be64(TOKEN_AT),
        seq: be64(SEQ_AT),
        boot: be64(BOOT_AT),
        echo: be64(ECHO_AT),
        lateness: std::time::Duration::from_micros(u64::from(be16(LATENESS_AT)) * 100),
        lease_ms: be16(LEASE_AT),
        node: String::from_utf8_lossy(&name[..name_len]).into_owned(),
        control: Control {
            role,
            priority: b[ROLE_AT + 1],
            eligible: flags & FLAG_ELIGIBLE != 0,
            want_takeover: flags & FLAG_WANT_TAKEOVER != 0,
            replica_ok: flags & FLAG_REPLICA_OK != 0,
            fresh_takeover: flags & FLAG_FRESH_TAKEOVER != 0,
            witness_reach: b[ROLE_AT + 3],
            witness_count: b[ROLE_AT + 4],
            links_up: b[ROLE_AT + 5],
            witness_links: b[ROLE_AT + 6],
            epoch: be64(EPOCH_AT),
            router_id: be32(SENDER_AT),
            semisync,
        },
    })
}

/// Lateness in the wire's unit (100 us), saturating.
pub fn lateness_units(late: std::time::Duration) -> u16 {
    u16::try_from(late.as_micros() / 100).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

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
            witness_links: 0b01,
            router_id: u32::from(Ipv4Addr::new(198, 51, 100, 11)),
            replica_ok: true,
            fresh_takeover: true,
            semisync: SemisyncAdvert::Asynchronous { episode: 0xA7 },
        }
    }

    fn origin() -> Origin {
        Origin {
            sender: Ipv4Addr::new(198, 51, 100, 11),
            token: 0xAABB_CCDD_EEFF_0011,
            boot: 42,
            node: "server1".into(),
            lease_ms: 24,
        }
    }

    fn signer(k: &[u8]) -> Signer {
        Signer::new(&Key::from_bytes(k))
    }

    #[test]
    fn round_trip() {
        let s = signer(b"0123456789abcdef0123456789abcdef");
        let t = Template::new(&origin(), 1, 7, 0x1234, &control());
        let p = s.finish(
            &t,
            (5 << 8) | 1,
            lateness_units(Duration::from_micros(1234)),
        );
        let d = decode(&s, &p).unwrap();
        assert_eq!(d.control, control());
        assert_eq!(
            (d.link, d.token, d.seq, d.ctl_gen, d.boot, d.echo),
            (1, 0xAABB_CCDD_EEFF_0011, (5 << 8) | 1, 7, 42, 0x1234)
        );
        assert_eq!(d.sender, Ipv4Addr::new(198, 51, 100, 11));
        assert_eq!(d.lateness, Duration::from_micros(1200));
        assert_eq!(d.lease_ms, 24);
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
                let p = s.finish(&Template::new(&origin(), 0, 1, 0, &c), 1, 0);
                assert_eq!(decode(&s, &p).unwrap().control, c);
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
            let p = s.finish(&Template::new(&origin(), 0, 1, 0, &c), 1, 0);
            assert_eq!(&p[SEMISYNC_AT..SEMISYNC_AT + 2], &semisync.to_wire());
            assert_eq!(decode(&s, &p).unwrap().control, c);
        }
    }

    #[test]
    fn header_matches_the_kernel_struct() {
        assert_eq!(PROBE_HEADER_LEN, 48);
        assert_eq!(TAG_AT, TAGGED_LEN);
        let s = signer(b"0123456789abcdef");
        let p = s.finish(&Template::new(&origin(), 2, 9, 0, &control()), 77, 0);
        // SAFETY: ProbeHeader is plain #[repr(C)] bytes of alignment 1.
        let h: agent_ebpf::ProbeHeader =
            unsafe { std::ptr::read_unaligned(p.as_ptr().cast::<agent_ebpf::ProbeHeader>()) };
        assert_eq!(h.magic, PROBE_MAGIC);
        assert_eq!((h.link, u64::from_be_bytes(h.seq)), (2, 77));
        // The kernel reads the token as a native u64 from the wire bytes.
        assert_eq!(
            u64::from_ne_bytes(h.token),
            crate::drivers::ebpf::token_to_kernel(origin().token)
        );
        // And checks the tag exactly so.
        let (k0, k1) = s.kernel_key();
        let mut tagged = [0u8; TAGGED_LEN];
        tagged.copy_from_slice(&p[..TAGGED_LEN]);
        assert_eq!(siphash24(k0, k1, &tagged), u64::from_le_bytes(h.tag));
    }

    #[test]
    fn the_kernel_siphash_is_siphash_2_4() {
        use std::hash::Hasher;
        let msg: [u8; TAGGED_LEN] = std::array::from_fn(|i| (i * 7 + 3) as u8);
        for (k0, k1) in [
            (0, 0),
            (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908),
            (u64::MAX, 1),
        ] {
            let mut h = siphasher::sip::SipHasher24::new_with_keys(k0, k1);
            h.write(&msg);
            assert_eq!(siphash24(k0, k1, &msg), h.finish());
        }
    }

    #[test]
    fn any_flipped_bit_fails() {
        let s = signer(b"0123456789abcdef");
        let p = s.finish(&Template::new(&origin(), 0, 1, 9, &control()), 3, 5);
        for i in 0..PROBE_LEN {
            let mut q = p;
            q[i] ^= 0x40;
            assert!(decode(&s, &q).is_err(), "byte {i} flipped still verifies");
        }
        assert_eq!(
            decode(&signer(b"another key of 16+"), &p),
            Err(DecodeError::BadMac)
        );
    }

    #[test]
    fn garbage_never_panics() {
        let s = signer(b"0123456789abcdef");
        for len in [0usize, 1, 47, 48, 131, 133, 1500] {
            assert!(decode(&s, &vec![0xFF; len]).is_err());
        }
        let mut t = Template::new(&origin(), 0, 1, 0, &control());
        t.0[ROLE_AT] = 9;
        let p = s.finish(&t, 1, 0);
        assert_eq!(decode(&s, &p), Err(DecodeError::BadRole(9)));
        // An unknown semi-sync state in a signed probe is refused, not guessed.
        let mut t = Template::new(&origin(), 0, 1, 0, &control());
        t.0[SEMISYNC_AT] = 5;
        let p = s.finish(&t, 1, 0);
        assert_eq!(decode(&s, &p), Err(DecodeError::BadSemisync(5)));
    }

    #[test]
    fn key_file_is_64_hex_digits_in_a_root_only_file() {
        let d = crate::operator::secret_file::tests::Dir::new("key");
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let path = d.file("key", format!("{hex}\n").as_bytes(), 0o600);
        let key = Key::load(&path).unwrap();
        assert_eq!(key.0.len(), 32, "hex decoded");
        assert_eq!(key.0[..4], [0x00, 0x11, 0x22, 0x33]);
        assert_eq!(key.0[31], 0xFF);
        assert_eq!(format!("{key:?}"), "Key(<redacted>)");
        // Whitespace around it is fine.
        let path = d.file("key", format!("  {hex}\r\n\n").as_bytes(), 0o400);
        assert_eq!(Key::load(&path).unwrap().0, key.0);

        let path = d.file("key", hex.as_bytes(), 0o644);
        let e = Key::load(&path).unwrap_err();
        assert!(
            matches!(e, KeyError::File(SecretFileError::Mode { mode: 0o644, .. })),
            "{e}"
        );
        for (bad, says) in [
            ("a".repeat(16), "16 characters"),
            ("correct horse battery staple".to_string(), "28 characters"),
            (format!("{hex}00"), "66 characters"),
            (hex[..63].to_string(), "63 characters"),
            (format!("{} {}", &hex[..32], &hex[32..]), "65 characters"),
            (
                format!("{}  {}", &hex[..31], &hex[33..]),
                "character 32 is not a hex digit",
            ),
            (hex.replace('0', "g"), "character 1 is not a hex digit"),
        ] {
            let path = d.file("key", bad.as_bytes(), 0o600);
            let e = Key::load(&path).unwrap_err();
            assert!(matches!(e, KeyError::NotHex { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
            assert!(!e.to_string().contains(&bad), "the key is never shown: {e}");
        }
        let path = d.file("key", "a".repeat(64).as_bytes(), 0o600);
        assert!(matches!(Key::load(&path), Err(KeyError::NotRandom { .. })));
        let e = Key::load(&d.0.join("missing")).unwrap_err();
        assert!(matches!(&e, KeyError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("head -c 32 /dev/urandom"), "{e}");
    }
}
