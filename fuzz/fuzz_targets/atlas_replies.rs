#![no_main]
//! The Atlas admin client's parsers, in the order a session meets them: a
//! greeting (or an ERR instead), the login's OK/ERR, then a query's reply
//! (OK, ERR, or a result set: column count, column definitions, EOF, rows,
//! EOF) and the backends table read from it. The input is a list of
//! packets, each a 2-byte little-endian length and its payload.

use ha_agent::drivers::atlas::client::parsers;
use ha_agent::drivers::atlas::table::parse_backends;
use libfuzzer_sys::fuzz_target;

/// The client's limits (client.rs): more is refused before parsing.
const MAX_COLUMNS: u64 = 64;
const MAX_ROWS: usize = 10_000;

fuzz_target!(|data: &[u8]| {
    let mut packets = split(data);
    let Some(greeting) = packets.next() else {
        return;
    };
    if greeting.first() == Some(&0xFF) {
        let _ = parsers::err(greeting);
        return;
    }
    if parsers::greeting(greeting).is_err() {
        return;
    }
    match packets.next() {
        Some(p) if p.first() == Some(&0x00) => {
            let _ = parsers::ok(p);
        }
        Some(p) if p.first() == Some(&0xFF) => {
            let _ = parsers::err(p);
            return;
        }
        _ => return,
    }
    let Some(first) = packets.next() else {
        return;
    };
    match first.first() {
        None | Some(0xFB) => {}
        Some(0x00) => {
            let _ = parsers::ok(first);
        }
        Some(0xFF) => {
            let _ = parsers::err(first);
        }
        Some(_) => result_set(first, &mut packets),
    }
});

fn result_set<'a>(first: &[u8], packets: &mut impl Iterator<Item = &'a [u8]>) {
    let Ok(n) = parsers::column_count(first) else {
        return;
    };
    if n == 0 || n > MAX_COLUMNS {
        return;
    }
    let mut names = Vec::new();
    for _ in 0..n {
        match packets.next().map(parsers::column) {
            Some(Ok(c)) => names.push(c.name),
            _ => return,
        }
    }
    if !packets.next().is_some_and(parsers::is_eof) {
        return;
    }
    let mut rows = Vec::new();
    for p in packets {
        if parsers::is_eof(p) {
            let _ = parse_backends(&names, &rows);
            return;
        }
        if p.first() == Some(&0xFF) {
            let _ = parsers::err(p);
            return;
        }
        if rows.len() >= MAX_ROWS {
            return;
        }
        match parsers::row(p, names.len()) {
            Ok(row) => {
                assert_eq!(row.len(), names.len());
                rows.push(row);
            }
            Err(_) => return,
        }
    }
}

fn split(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = data.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (packet, rest) = rest.split_at(len);
        data = rest;
        Some(packet)
    })
}
