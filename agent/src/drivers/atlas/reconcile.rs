//! What to change in Atlas's backend table next, as a pure function.
//!
//! The driver reads the table, asks [`next_step`], applies that one step,
//! reads the table again and asks again. One step at a time, re-reading in
//! between, because Atlas renumbers backends behind our back: `REMOVE
//! BACKEND n` shifts every later index down by one, and `ADD MASTER` while ro
//! backends exist puts the new rw entry at the first ro entry's index and
//! moves that ro entry to the end. A plan computed from one read would remove
//! the wrong backend after its first step.
//!
//! The order of the steps is what keeps the data safe while the table moves:
//!
//! 1. The desired rw backend is added first: Atlas sends writes to the first
//!    `up` rw backend and has nowhere to send them without one.
//! 2. Stale entries are removed next, stale rw entries before stale ro ones
//!    (a wrong rw backend can take writes and fork the data; a stale ro one
//!    serves old reads). A removal only happens once the desired rw entry
//!    exists and is not the one removed, so the table never lacks an rw entry
//!    that it had.
//! 3. Missing ro backends are added last (until then reads fall back to the
//!    rw backend, which is correct, only slower).
//!
//! Every step changes the table (adds only what is missing, removes only
//! existing indices), so a step that leaves the table unchanged means Atlas
//! ignored it, which the driver reports.

use std::fmt;
use std::net::SocketAddrV4;

use serde::Serialize;

use super::table::{Backend, Kind};

/// The table the agent wants: exactly one rw backend, and these ro backends
/// (in any order, each once). The same address may be both rw and ro (Atlas
/// allows it: its duplicate check compares the address and the type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Desired {
    pub rw: SocketAddrV4,
    pub ro: Vec<SocketAddrV4>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The desired rw backend is missing.
    AddMaster(SocketAddrV4),
    /// A stale entry (by its current 1-based index).
    Remove(u32),
    /// A desired ro backend is missing.
    AddSlave(SocketAddrV4),
    Done,
}

impl Step {
    /// The admin command that carries the step out (`None` for `Done`).
    pub fn command(&self) -> Option<String> {
        match self {
            Step::AddMaster(a) => Some(format!("ADD MASTER {a}")),
            Step::Remove(n) => Some(format!("REMOVE BACKEND {n}")),
            Step::AddSlave(a) => Some(format!("ADD SLAVE {a}")),
            Step::Done => None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.command() {
            Some(c) => f.write_str(&c),
            None => f.write_str("done"),
        }
    }
}

/// The next step from `table` towards `desired`.
pub fn next_step(table: &[Backend], desired: &Desired) -> Step {
    let Some(keep_rw) = table
        .iter()
        .position(|b| b.kind == Kind::Rw && b.address == desired.rw)
    else {
        return Step::AddMaster(desired.rw);
    };
    let stale_rw = table
        .iter()
        .enumerate()
        .find(|&(i, b)| b.kind == Kind::Rw && i != keep_rw);
    if let Some((_, b)) = stale_rw {
        return Step::Remove(b.ndx);
    }
    // Stale ro: not desired, or a second entry for the same address; and
    // entries of type unknown, which Atlas cannot route to.
    let mut seen: Vec<SocketAddrV4> = Vec::new();
    for b in table {
        let stale = match b.kind {
            Kind::Rw => false,
            Kind::Unknown => true,
            Kind::Ro => !desired.ro.contains(&b.address) || seen.contains(&b.address),
        };
        if stale {
            return Step::Remove(b.ndx);
        }
        if b.kind == Kind::Ro {
            seen.push(b.address);
        }
    }
    match desired.ro.iter().find(|a| !seen.contains(a)) {
        Some(&a) => Step::AddSlave(a),
        None => Step::Done,
    }
}

/// True when `table` is what `desired` asks for.
pub fn in_sync(table: &[Backend], desired: &Desired) -> bool {
    next_step(table, desired) == Step::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::atlas::table::State;
    use std::net::Ipv4Addr;

    /// Atlas's table semantics, from its source (network_backends_add and the
    /// admin script's REMOVE BACKEND): the model the steps are tested against.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Model(Vec<(SocketAddrV4, Kind)>);

    impl Model {
        fn add(&mut self, a: SocketAddrV4, kind: Kind) {
            // Same address with the same type: ignored (Atlas only logs it).
            if self.0.iter().any(|&(x, k)| x == a && k == kind) {
                return;
            }
            let first_ro = self.0.iter().position(|&(_, k)| k == Kind::Ro);
            self.0.push((a, kind));
            // An rw entry takes the first ro entry's place; that one moves to the end.
            if let (Kind::Rw, Some(i)) = (kind, first_ro) {
                let last = self.0.len() - 1;
                self.0.swap(i, last);
            }
        }

        fn apply(&mut self, step: Step) -> Result<(), String> {
            match step {
                Step::AddMaster(a) => self.add(a, Kind::Rw),
                Step::AddSlave(a) => self.add(a, Kind::Ro),
                Step::Remove(n) => {
                    if n == 0 || n as usize > self.0.len() {
                        return Err(format!("invalid backend_id {n} in {:?}", self.0));
                    }
                    self.0.remove(n as usize - 1);
                }
                Step::Done => {}
            }
            Ok(())
        }

        fn table(&self) -> Vec<Backend> {
            self.0
                .iter()
                .enumerate()
                .map(|(i, &(address, kind))| Backend {
                    ndx: i as u32 + 1,
                    address,
                    state: State::Unknown,
                    kind,
                })
                .collect()
        }

        fn rw_count(&self) -> usize {
            self.0.iter().filter(|&&(_, k)| k == Kind::Rw).count()
        }
    }

    fn addr(i: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i), 3306)
    }

    /// Drives `start` to `desired` with the model; checks every property on
    /// the way and returns the steps taken.
    fn converge(start: &Model, desired: &Desired) -> Vec<Step> {
        let mut m = start.clone();
        let mut steps = Vec::new();
        let mut had_desired_rw = false;
        for _ in 0..=crate::drivers::atlas::MAX_STEPS_PER_ROUND {
            let step = next_step(&m.table(), desired);
            if step == Step::Done {
                check_final(&m, desired);
                return steps;
            }
            let before = m.clone();
            m.apply(step)
                .unwrap_or_else(|e| panic!("from {start:?} to {desired:?}: {e}"));
            steps.push(step);
            assert_ne!(
                m, before,
                "from {start:?} to {desired:?}: {step} did not change the table"
            );
            if before.rw_count() > 0 {
                assert!(
                    m.rw_count() > 0,
                    "from {start:?} to {desired:?}: {step} left no rw entry"
                );
            }
            let has_desired_rw = m.0.contains(&(desired.rw, Kind::Rw));
            assert!(
                has_desired_rw || !had_desired_rw,
                "from {start:?} to {desired:?}: {step} removed the desired rw entry"
            );
            had_desired_rw = has_desired_rw;
        }
        panic!("from {start:?} to {desired:?}: no convergence, steps {steps:?}");
    }

    fn check_final(m: &Model, desired: &Desired) {
        let rw: Vec<_> =
            m.0.iter()
                .filter(|&&(_, k)| k == Kind::Rw)
                .map(|&(a, _)| a)
                .collect();
        assert_eq!(rw, vec![desired.rw], "{m:?} for {desired:?}");
        let mut ro: Vec<_> =
            m.0.iter()
                .filter(|&&(_, k)| k == Kind::Ro)
                .map(|&(a, _)| a)
                .collect();
        let mut want = desired.ro.clone();
        want.sort();
        want.dedup();
        ro.sort();
        assert_eq!(ro, want, "{m:?} for {desired:?}");
        assert_eq!(m.0.len(), 1 + want.len(), "{m:?} for {desired:?}");
        assert!(in_sync(&m.table(), desired));
    }

    const KINDS: [Kind; 3] = [Kind::Rw, Kind::Ro, Kind::Unknown];

    #[test]
    fn every_small_table_converges_safely() {
        // Every table of up to 4 entries over 3 addresses and 3 types, towards
        // every desired state with rw in {1, 2, 4} and any ro subset of
        // {1, 2, 3, 4} (4 is never in the starting tables).
        let entries: Vec<(SocketAddrV4, Kind)> = (1..=3)
            .flat_map(|i| KINDS.iter().map(move |&k| (addr(i), k)))
            .collect();
        let mut tables = vec![Model(vec![])];
        let mut frontier = tables.clone();
        for _ in 0..4 {
            let mut next = Vec::new();
            for t in &frontier {
                for &e in &entries {
                    let mut t = t.clone();
                    t.0.push(e);
                    next.push(t);
                }
            }
            tables.extend(next.iter().cloned());
            frontier = next;
        }
        assert_eq!(tables.len(), 1 + 9 + 81 + 729 + 6561);
        let mut desireds = Vec::new();
        for rw in [1, 2, 4] {
            for mask in 0u8..16 {
                let ro = (1..=4).filter(|i| mask & (1 << (i - 1)) != 0).map(addr);
                desireds.push(Desired {
                    rw: addr(rw),
                    ro: ro.collect(),
                });
            }
        }
        let mut longest = 0;
        for t in &tables {
            for d in &desireds {
                longest = longest.max(converge(t, d).len());
            }
        }
        // 4 stale entries + 1 rw + 4 ro at most.
        assert!(longest <= 9, "{longest}");
    }

    #[test]
    fn random_larger_tables_converge_safely() {
        // xorshift64*: deterministic, so a failure reproduces.
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = move |n: u64| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % n
        };
        for _ in 0..3000 {
            let len = rnd(7);
            let mut m = Model(vec![]);
            for _ in 0..len {
                // Build it the way Atlas would have (through add), half the time.
                let e = (addr(rnd(6) as u8 + 1), KINDS[rnd(3) as usize]);
                if rnd(2) == 0 {
                    m.add(e.0, e.1);
                } else {
                    m.0.push(e);
                }
            }
            let ro = (0..rnd(4)).map(|_| addr(rnd(6) as u8 + 1)).collect();
            let d = Desired {
                rw: addr(rnd(6) as u8 + 1),
                ro,
            };
            converge(&m, &d);
        }
    }

    #[test]
    fn failover_removes_the_replica_and_nothing_else() {
        let vip = addr(150);
        let replica = addr(101);
        let m = Model(vec![(vip, Kind::Rw), (replica, Kind::Ro)]);
        let d = Desired {
            rw: vip,
            ro: vec![],
        };
        assert_eq!(converge(&m, &d), vec![Step::Remove(2)]);
    }

    #[test]
    fn empty_table_gets_rw_first_then_ro() {
        let d = Desired {
            rw: addr(150),
            ro: vec![addr(101)],
        };
        assert_eq!(
            converge(&Model(vec![]), &d),
            vec![Step::AddMaster(addr(150)), Step::AddSlave(addr(101))]
        );
    }

    #[test]
    fn wrong_rw_is_replaced_add_first_then_remove() {
        // An old primary listed as rw (index 1), with a replica at 2: the
        // desired rw lands at 2 (the first ro's place), the ro moves to 3.
        let m = Model(vec![(addr(100), Kind::Rw), (addr(101), Kind::Ro)]);
        let d = Desired {
            rw: addr(150),
            ro: vec![addr(101)],
        };
        assert_eq!(
            converge(&m, &d),
            vec![Step::AddMaster(addr(150)), Step::Remove(1)]
        );
    }

    #[test]
    fn ro_entry_for_the_rw_address_is_allowed() {
        // The seed's cnf after failover: the VIP as both rw and ro.
        let vip = addr(150);
        let d = Desired {
            rw: vip,
            ro: vec![vip],
        };
        assert_eq!(
            converge(&Model(vec![]), &d),
            vec![Step::AddMaster(vip), Step::AddSlave(vip)]
        );
    }

    #[test]
    fn commands_are_what_the_admin_port_accepts() {
        assert_eq!(
            Step::AddMaster(addr(150)).command().unwrap(),
            "ADD MASTER 10.0.0.150:3306"
        );
        assert_eq!(Step::Remove(2).command().unwrap(), "REMOVE BACKEND 2");
        assert_eq!(
            Step::AddSlave(addr(101)).command().unwrap(),
            "ADD SLAVE 10.0.0.101:3306"
        );
        assert_eq!(Step::Done.command(), None);
    }
}
