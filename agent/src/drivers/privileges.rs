//! Start-up check of the capabilities the agent needs, so a missing one is
//! reported once, clearly, instead of as an EPERM from deep inside a takeover.

use caps::{CapSet, Capability, CapsHashSet};

/// How to grant the capabilities; part of every error.
const FIX: &str = "run ha-agent as root, or give its systemd unit \
    AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_PERFMON CAP_SYS_NICE, \
    or grant them to the binary with \
    `setcap cap_net_admin,cap_net_raw,cap_bpf,cap_perfmon,cap_sys_nice+ep /usr/sbin/ha-agent`";

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot read this process's capabilities: {0}")]
    Read(String),
    #[error("ha-agent lacks {}: {FIX}", .missing.join(", "))]
    Missing { missing: Vec<&'static str> },
}

/// Checks the effective capabilities of this process.
///
/// A missing CAP_SYS_NICE is only a warning: the probe sender then runs with
/// normal scheduling (more jitter under load), which is correct, just slower.
pub fn check() -> Result<(), PrivilegeError> {
    let have =
        caps::read(None, CapSet::Effective).map_err(|e| PrivilegeError::Read(e.to_string()))?;
    let missing = missing(&have);
    if !missing.is_empty() {
        return Err(PrivilegeError::Missing { missing });
    }
    if !can_use_realtime(&have) {
        tracing::warn!(
            "CAP_SYS_NICE is missing: the probe sender cannot use SCHED_FIFO (node.rt_priority) \
             and will run with normal scheduling; grant CAP_SYS_NICE for steadier probe timing"
        );
    }
    Ok(())
}

/// The required capabilities absent from `have`, by name.
///
/// - CAP_NET_ADMIN: VIPs (rtnetlink) and attaching XDP;
/// - CAP_NET_RAW: the ARP socket;
/// - CAP_BPF: loading the eBPF program and maps. Kernels before 5.8 have no
///   CAP_BPF and require CAP_SYS_ADMIN instead, which newer kernels also
///   accept, so CAP_SYS_ADMIN satisfies this requirement.
pub fn missing(have: &CapsHashSet) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !have.contains(&Capability::CAP_NET_ADMIN) {
        out.push("CAP_NET_ADMIN");
    }
    if !have.contains(&Capability::CAP_NET_RAW) {
        out.push("CAP_NET_RAW");
    }
    if !have.contains(&Capability::CAP_BPF) && !have.contains(&Capability::CAP_SYS_ADMIN) {
        out.push("CAP_BPF");
    }
    out
}

/// Whether the probe sender may switch to SCHED_FIFO.
pub fn can_use_realtime(have: &CapsHashSet) -> bool {
    have.contains(&Capability::CAP_SYS_NICE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Capability::*;

    fn set(caps: &[Capability]) -> CapsHashSet {
        caps.iter().copied().collect()
    }

    #[test]
    fn nothing_is_missing_with_the_unit_file_set() {
        let have = set(&[
            CAP_NET_ADMIN,
            CAP_NET_RAW,
            CAP_BPF,
            CAP_PERFMON,
            CAP_SYS_NICE,
        ]);
        assert!(missing(&have).is_empty());
        assert!(can_use_realtime(&have));
    }

    #[test]
    fn empty_set_misses_all_three() {
        assert_eq!(
            missing(&set(&[])),
            ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF"]
        );
        assert!(!can_use_realtime(&set(&[])));
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_only() {
        assert_eq!(
            missing(&set(&[CAP_SYS_ADMIN])),
            ["CAP_NET_ADMIN", "CAP_NET_RAW"]
        );
        assert!(missing(&set(&[CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW])).is_empty());
    }

    #[test]
    fn each_missing_one_is_named() {
        assert_eq!(missing(&set(&[CAP_NET_RAW, CAP_BPF])), ["CAP_NET_ADMIN"]);
        assert_eq!(missing(&set(&[CAP_NET_ADMIN, CAP_BPF])), ["CAP_NET_RAW"]);
        assert_eq!(
            missing(&set(&[CAP_NET_ADMIN, CAP_NET_RAW, CAP_PERFMON])),
            ["CAP_BPF"]
        );
    }

    #[test]
    fn error_names_all_missing_and_the_fix() {
        let e = PrivilegeError::Missing {
            missing: missing(&set(&[CAP_NET_RAW])),
        };
        let text = e.to_string();
        assert!(text.contains("CAP_NET_ADMIN, CAP_BPF"), "{text}");
        assert!(
            text.contains("AmbientCapabilities=") && text.contains("setcap"),
            "{text}"
        );
    }
}
