//! Embeds the eBPF object into the agent.
//!
//! `HA_AGENT_EBPF_OBJECT=/path/to/agent-ebpf` (set by `cargo xtask build`)
//! is copied to `$OUT_DIR/ha-agent.bpf.o`, which `ebpf.rs` includes. Without
//! it an empty file is written: the agent then needs `[ebpf] object = ...`.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=HA_AGENT_EBPF_OBJECT");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dest = out_dir.join("ha-agent.bpf.o");
    match env::var_os("HA_AGENT_EBPF_OBJECT").filter(|p| !p.is_empty()) {
        Some(src) => {
            let src = PathBuf::from(src);
            println!("cargo:rerun-if-changed={}", src.display());
            if let Err(e) = fs::copy(&src, &dest) {
                panic!(
                    "HA_AGENT_EBPF_OBJECT={}: cannot copy the eBPF object: {e} \
                     (build it with `cargo xtask build-ebpf`)",
                    src.display()
                );
            }
        }
        None => {
            if fs::read(&dest).map(|b| !b.is_empty()).unwrap_or(true) {
                fs::write(&dest, b"").expect("cannot write $OUT_DIR/ha-agent.bpf.o");
            }
        }
    }
}
