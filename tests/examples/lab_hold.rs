//! Builds a lab and keeps it for N seconds (default 60) for manual poking:
//! `cargo run -p ha-lab --example lab_hold -- 120` (as root). Ctrl-C cleans up.
fn main() -> anyhow::Result<()> {
    ha_lab::install_interrupt_handler();
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let lab = ha_lab::Lab::new()?;
    println!(
        "lab {} in {}: namespaces {:?}",
        lab.prefix(),
        lab.dir().display(),
        lab.namespaces()
    );
    let r = ha_lab::sleep(std::time::Duration::from_secs(secs));
    println!(
        "cleaning up ({})",
        if r.is_err() {
            "interrupted"
        } else {
            "time is up"
        }
    );
    lab.close()
}
