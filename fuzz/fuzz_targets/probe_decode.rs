#![no_main]
//! `protocol::decode(&Key, &[u8])` on any input: the first 32 bytes are the
//! key, the rest the datagram. `cargo xtask fuzz` seeds it with probes
//! signed by `protocol::encode`, so mutations start from inputs that verify
//! (signed and mutated probes), not only from garbage.

use ha_agent::protocol::{decode, Key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((key, datagram)) = data.split_first_chunk::<32>() else {
        return;
    };
    let key = Key::from_bytes(key);
    if let Ok(probe) = decode(&key, datagram) {
        // What the agent logs of a verified probe must format.
        let _ = format!("{probe:?}");
    }
});
