//! The eBPF liveness program (built for `bpfel-unknown-none` by `cargo xtask build-ebpf`).
//! On the host this file compiles to an empty binary so the workspace builds with stable Rust.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
