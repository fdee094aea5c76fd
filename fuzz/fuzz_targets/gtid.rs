#![no_main]
//! The GTID parsers and set operations, MySQL and MariaDB forms: two texts
//! separated by `|`. Beyond "never panics", what parses is normalized,
//! prints back to itself, and the set operations agree with each other.

use ha_agent::drivers::mysql::gtid::{
    errant_positions, errant_states, Errant, MariadbGtids, MysqlGtidSet,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (a, b) = text.split_once('|').unwrap_or((&text, ""));
    mysql(a, b);
    mariadb(a, b);
});

fn mysql(a: &str, b: &str) {
    let Ok(x) = MysqlGtidSet::parse(a) else {
        return;
    };
    normalized(&x);
    assert_eq!(MysqlGtidSet::parse(&x.to_string()).as_ref(), Ok(&x));
    let Ok(y) = MysqlGtidSet::parse(b) else {
        return;
    };
    let r = x.subtract(&y);
    normalized(&r);
    // r is in x, shares nothing with y, and x - r is in y.
    assert!(r.subtract(&x).is_empty(), "{x} - {y} = {r}");
    assert_eq!(r.subtract(&y), r, "{x} - {y} = {r}");
    assert!(x.subtract(&r).is_subset_of(&y), "{x} - {y} = {r}");
    assert!(r.count() <= x.count());
    assert_eq!(x.is_subset_of(&y), r.is_empty());
    let e = Errant::mysql(&x, &y);
    assert_eq!(e.set.to_string(), r.to_string());
    let _ = e.to_string();
}

/// Sorted, disjoint, non-adjacent intervals within 1..=2^63-1.
fn normalized(s: &MysqlGtidSet) {
    for (_, ivs) in s.intervals() {
        assert!(!ivs.is_empty());
        for iv in ivs {
            assert!(1 <= iv.start && iv.start <= iv.end);
        }
        for w in ivs.windows(2) {
            assert!(w[0].end < u64::MAX && w[0].end + 1 < w[1].start, "{ivs:?}");
        }
    }
}

fn mariadb(a: &str, b: &str) {
    let Ok(x) = MariadbGtids::parse_state(a) else {
        return;
    };
    assert_eq!(MariadbGtids::parse_state(&x.to_string()).as_ref(), Ok(&x));
    let pos = x.position();
    for g in pos.gtids() {
        assert_eq!(x.last_in_domain(g.domain), Some(g));
    }
    if let Ok(p) = MariadbGtids::parse_position(a) {
        assert_eq!(p.position(), p);
    }
    let Ok(y) = MariadbGtids::parse_state(b) else {
        return;
    };
    let errant = errant_positions(&pos, &y);
    assert_eq!(errant.is_empty(), pos.reached_by(&y));
    let div = errant_states(&x, &y);
    for e in &div.errant {
        assert!(e.transactions >= 1);
    }
    let merged = x.merged(&y);
    assert!(pos.reached_by(&merged.position()));
    let e = Errant::mariadb(&x, &y);
    let _ = e.to_string();
}
