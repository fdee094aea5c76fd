#![no_main]
//! What the MySQL driver reads from a server and builds SQL from: the
//! `VERSION()` / `@@version_comment` pair, a `SHOW SLAVE STATUS` row (its
//! GTID positions and thread errors), the binary log index, mariadb-binlog
//! output, and the statements built from those values.
//!
//! Input lines: the version, the comment, then `Column=value` (a bare
//! `Column` is NULL), `user:...` / `password:...` for the replication
//! source, anything else for the binlog index.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ha_agent::drivers::mysql::flashback::{count_row_statements, parse_index};
use ha_agent::drivers::mysql::flavor::{ReplicationSource, ServerKind};
use ha_agent::drivers::mysql::gtid::GtidSet;
use ha_agent::drivers::mysql::replica::{missing, Columns, ReplicaState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = count_row_statements(data);
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let version = lines.next().unwrap_or_default();
    let comment = lines.next().unwrap_or_default();
    let detected = ServerKind::detect(version, comment);
    let mut cols = Columns::new();
    let (mut user, mut password) = ("repl", "secret");
    let mut index = String::new();
    for line in lines {
        if let Some(u) = line.strip_prefix("user:") {
            user = u;
        } else if let Some(p) = line.strip_prefix("password:") {
            password = p;
        } else if let Some((name, value)) = line.split_once('=') {
            cols.insert(name.to_string(), Some(value.to_string()));
        } else if line.starts_with(|c: char| c.is_ascii_uppercase()) {
            cols.insert(line.to_string(), None);
        } else {
            index.push_str(line);
            index.push('\n');
        }
    }
    let _ = parse_index(&index, Path::new("/var/lib/mysql"));
    let kinds = [
        detected.ok(),
        ServerKind::detect("10.11.19-MariaDB-log", "").ok(),
        ServerKind::detect("8.0.36", "MySQL Community Server - GPL").ok(),
        ServerKind::detect("5.7.44-log", "").ok(),
        ServerKind::detect("8.4.0", "").ok(),
    ];
    for kind in kinds.into_iter().flatten() {
        let _ = kind.generation();
        if let Ok(state) = ReplicaState::from_columns(&kind, &cols) {
            for set in state.received.iter().chain([&state.executed]) {
                statements(&kind, set);
            }
            if let Some(received) = &state.received {
                let _ = missing(received, &state.executed).to_string();
            }
        }
        let source = ReplicationSource {
            address: SocketAddr::from(([203, 0, 113, 11], 3306)),
            user,
            password,
        };
        if let Ok(sql) = kind.change_source(&source) {
            // Values are refused, never escaped: nothing can end the string.
            for v in [user, password] {
                assert!(!v.contains(['\'', '\\']), "{sql}");
            }
            let _ = sql.to_string();
        }
    }
});

fn statements(kind: &ServerKind, set: &GtidSet) {
    let wait = kind.wait_for(set, Duration::from_millis(1500));
    assert_eq!(wait.text().matches('\'').count(), 2, "{wait}");
    for sql in kind.set_start_position(Some(set)) {
        assert_eq!(sql.text().matches('\'').count(), 2, "{sql}");
    }
}
