#![no_main]
//! The probe decoder and the session tracker on any input. The first 32
//! bytes are the key, the rest a datagram:
//! - decoded as received (signed probes that `cargo xtask fuzz` seeds,
//!   mutated: almost every mutation must fail the MACs, never panic);
//! - then taken as a template, signed as a sender would (so every field
//!   value reaches the parser and the session tracker with valid MACs),
//!   decoded, and handed to `Sessions::on_probe`.

use std::net::Ipv4Addr;

use ha_agent::decisions::session::{SessionConfig, Sessions};
use ha_agent::protocol::{decode, Key, Signer, Template, PROBE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((key, datagram)) = data.split_first_chunk::<32>() else {
        return;
    };
    let signer = Signer::new(&Key::from_bytes(key));
    if let Ok(probe) = decode(&signer, datagram) {
        // What the agent logs of a verified probe must format.
        let _ = format!("{probe:?}");
    }
    let Some((template, rest)) = datagram.split_first_chunk::<PROBE_LEN>() else {
        return;
    };
    let seq = rest
        .first_chunk::<8>()
        .map_or(1, |b| u64::from_be_bytes(*b));
    let signed = signer.finish(&Template(*template), seq, 0);
    let Ok(probe) = decode(&signer, &signed) else {
        return;
    };
    let peer = Ipv4Addr::new(198, 51, 100, 12);
    let mut sessions = Sessions::new(SessionConfig {
        our_token: 0x0A0B_0C0D,
        peer_id: probe.sender,
        peer_ips: vec![peer, Ipv4Addr::new(203, 0, 113, 12)],
    });
    for link in 0..3 {
        let _ = sessions.on_probe(link, peer, &probe);
    }
    let _ = (
        sessions.echo(),
        sessions.min_boot(),
        sessions.accepted_token(),
    );
});
