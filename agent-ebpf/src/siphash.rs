//! SipHash-2-4 of the probe header's 40 tagged bytes: the kernel checks it
//! on every probe, the senders compute it for every probe. One fixed-length
//! implementation for both sides (no loops over a variable length, so the
//! verifier sees straight-line code); the agent's tests hold it against the
//! `siphasher` crate.

use crate::TAGGED_LEN;

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

#[inline(always)]
fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    round(v);
    round(v);
    v[0] ^= m;
}

#[inline(always)]
fn word(msg: &[u8; TAGGED_LEN], i: usize) -> u64 {
    u64::from_le_bytes([
        msg[i],
        msg[i + 1],
        msg[i + 2],
        msg[i + 3],
        msg[i + 4],
        msg[i + 5],
        msg[i + 6],
        msg[i + 7],
    ])
}

/// SipHash-2-4 with key (`k0`, `k1`) of exactly [`TAGGED_LEN`] bytes.
#[inline(always)]
pub fn siphash24(k0: u64, k1: u64, msg: &[u8; TAGGED_LEN]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    compress(&mut v, word(msg, 0));
    compress(&mut v, word(msg, 8));
    compress(&mut v, word(msg, 16));
    compress(&mut v, word(msg, 24));
    compress(&mut v, word(msg, 32));
    // The last block: the length in the top byte, no trailing bytes.
    compress(&mut v, (TAGGED_LEN as u64) << 56);
    v[2] ^= 0xff;
    round(&mut v);
    round(&mut v);
    round(&mut v);
    round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}
