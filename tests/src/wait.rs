//! Bounded waiting, and an interrupt flag (SIGINT/SIGTERM) that every wait checks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag instead of killing the process, so the
/// next wait fails with "interrupted" and the lab is cleaned up by unwinding.
/// A second signal of the same kind kills the process (default action).
pub fn install_interrupt_handler() {
    // SAFETY: the handler only stores to an atomic; SA_RESETHAND restores the
    // default action after the first signal.
    unsafe {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// True once SIGINT/SIGTERM arrived (after [`install_interrupt_handler`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once SIGINT/SIGTERM arrived: for loops that poll.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, in slices of at most 50 ms, failing early if interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupt()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Polls `cond` every millisecond until it is true; returns the time it took.
/// Fails with "timed out after T waiting for WHAT" if it is still false
/// after `timeout`, or if interrupted.
pub fn wait_until(
    timeout: Duration,
    what: impl std::fmt::Display,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration> {
    wait_until_ok(timeout, what, || Ok(cond()))
}

/// Like [`wait_until`] for a condition that can fail; the last error is
/// reported if it never became true.
pub fn wait_until_ok(
    timeout: Duration,
    what: impl std::fmt::Display,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    let mut last_err = None;
    loop {
        check_interrupt()?;
        match cond() {
            Ok(true) => return Ok(start.elapsed()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() >= timeout {
            match last_err {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what} (last error: {e:#})")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_reports_what_never_happened() {
        let e = wait_until(Duration::from_millis(20), "the moon to turn blue", || false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the moon to turn blue"), "{e}");
        let mut n = 0;
        let d = wait_until(Duration::from_secs(1), "three polls", || {
            n += 1;
            n == 3
        })
        .unwrap();
        assert!(d < Duration::from_secs(1));
    }
}
