//! Atlas admin client and reconciler against the fixture Atlas (loopback
//! only, no privileges: these run with plain `cargo test`).
//!
//! Waiting is done on the reconciler's status channel (notified on every
//! change), never by sleeping; times are measured and printed, not asserted.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ha_agent::drivers::atlas::client::{AdminConnection, ClientError, Reply, Timeouts};
use ha_agent::drivers::atlas::{
    in_sync, AtlasHandle, AtlasReconciler, AtlasStatus, Backend, Desired, Kind, Password, Persist,
    Settings, State,
};
use ha_agent::operator::config::{AtlasConfig, AtlasPersist};
use ha_lab::atlas_fixture::{self as fx, AtlasFixture, Command, FixtureConfig};

fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(ha_lab::INSIDE_VIP, 3306)
}
fn replica() -> SocketAddrV4 {
    "203.0.113.12:3306".parse().unwrap()
}
fn old_primary() -> SocketAddrV4 {
    "203.0.113.11:3306".parse().unwrap()
}

const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(2),
    query: Duration::from_secs(2),
};
const WAIT: Duration = Duration::from_secs(20);

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ha-lab-atlas-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(rw: &[SocketAddrV4], ro: &[SocketAddrV4]) -> AtlasFixture {
    AtlasFixture::new(FixtureConfig {
        rw: rw.to_vec(),
        ro: ro.to_vec(),
        ..Default::default()
    })
    .unwrap()
}

async fn login(f: &AtlasFixture) -> AdminConnection {
    AdminConnection::connect(f.addr(), f.user(), &Password::new(f.password()), TIMEOUTS)
        .await
        .unwrap()
}

fn settings(f: &AtlasFixture, persist: Persist) -> Settings {
    Settings {
        admin_address: f.addr(),
        user: f.user().into(),
        password: Password::new(f.password()),
        persist,
        period: Duration::from_millis(200),
        timeouts: TIMEOUTS,
    }
}

fn desired(ro: &[SocketAddrV4]) -> Desired {
    Desired {
        rw: vip(),
        ro: ro.to_vec(),
    }
}

async fn wait_status(
    h: &AtlasHandle,
    what: &str,
    pred: impl FnMut(&AtlasStatus) -> bool,
) -> AtlasStatus {
    let mut w = h.watch();
    let found = match tokio::time::timeout(WAIT, w.wait_for(pred)).await {
        Ok(Ok(s)) => s.clone(),
        Ok(Err(_)) => panic!("the reconciler stopped while waiting for {what}"),
        Err(_) => panic!("no {what} within {WAIT:?}; status: {:#?}", h.status()),
    };
    found
}

/// The agent's changes never took away the last rw entry. Changes made by
/// the tests themselves (operator, checker, start) are not the agent's.
fn assert_rw_never_absent(f: &AtlasFixture) {
    let history = f.history();
    let has_rw = |t: &[Backend]| t.iter().any(|b| b.kind == Kind::Rw);
    for pair in history.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let by_agent = ["ADD ", "REMOVE "]
            .iter()
            .any(|p| after.cause.starts_with(p));
        if by_agent && has_rw(&before.table) {
            assert!(
                has_rw(&after.table),
                "`{}` left no rw backend; history:\n{}",
                after.cause,
                history
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// The commands that change the table or persist it, in order.
fn changes_sent(f: &AtlasFixture) -> Vec<String> {
    f.queries()
        .into_iter()
        .filter(|q| !q.starts_with("SELECT"))
        .collect()
}

fn refused(e: ClientError) -> (String, u16, String, String) {
    match e {
        ClientError::Refused { command, error, .. } => {
            (command, error.code, error.sqlstate, error.message)
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

// ---- a raw client, to send what the agent's client never sends -----------

struct Raw(TcpStream);

impl Raw {
    /// Logs in with `capabilities`; returns the first byte of the reply, or
    /// None if the server closed the connection without one.
    fn login(
        f: &AtlasFixture,
        user: &str,
        password: &str,
        capabilities: u32,
    ) -> (Raw, Option<Vec<u8>>) {
        let mut s = TcpStream::connect(f.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (_, greeting) = read_packet(&mut s).unwrap();
        let nul = greeting.iter().position(|&b| b == 0).unwrap();
        assert_eq!(&greeting[1..nul], fx::SERVER_VERSION.as_bytes());
        let rest = &greeting[nul + 1..];
        let mut challenge = rest[4..12].to_vec();
        challenge.extend_from_slice(&rest[31..43]);
        let mut p = capabilities.to_le_bytes().to_vec();
        p.extend_from_slice(&(1u32 << 24).to_le_bytes());
        p.push(8);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(user.as_bytes());
        p.push(0);
        p.push(20);
        p.extend_from_slice(&fx::scramble(password.as_bytes(), &challenge));
        write_packet(&mut s, 1, &p);
        let reply = read_packet(&mut s).map(|(_, p)| p);
        (Raw(s), reply)
    }

    fn command(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        write_packet(&mut self.0, 0, payload);
        read_packet(&mut self.0).map(|(_, p)| p)
    }

    /// True if the server has closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.0.read(&mut b), Ok(0))
    }
}

fn read_packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).ok()?;
    let mut p = vec![0u8; u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize];
    s.read_exact(&mut p).ok()?;
    Some((h[3], p))
}

fn write_packet(s: &mut TcpStream, seq: u8, payload: &[u8]) {
    let mut b = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    b.push(seq);
    b.extend_from_slice(payload);
    s.write_all(&b).unwrap();
}

fn err_message(p: &[u8]) -> (u16, String, String) {
    assert_eq!(p[0], 0xFF, "not an ERR packet: {p:?}");
    (
        u16::from_le_bytes([p[1], p[2]]),
        String::from_utf8_lossy(&p[4..9]).into_owned(),
        String::from_utf8_lossy(&p[9..]).into_owned(),
    )
}

const CAPS: u32 = fx::CLIENT_PROTOCOL_41 | fx::CLIENT_SECURE_CONNECTION | fx::CLIENT_LONG_PASSWORD;

// ---- the client ------------------------------------------------------------

#[tokio::test]
async fn client_logs_in_and_parses_the_backends() {
    let f = fixture(&[vip()], &[replica()]);
    f.set_state(1, State::Up).unwrap();
    let mut c = login(&f).await;
    assert_eq!(c.server_version(), "5.0.99-agent-admin");
    let table = c.backends().await.unwrap();
    assert_eq!(
        table,
        vec![
            Backend {
                ndx: 1,
                address: vip(),
                state: State::Up,
                kind: Kind::Rw
            },
            Backend {
                ndx: 2,
                address: replica(),
                state: State::Unknown,
                kind: Kind::Ro
            },
        ]
    );
    match c.query("SELECT VERSION").await.unwrap() {
        Reply::Rows(rs) => assert_eq!(rs.rows, vec![vec![Some(fx::ATLAS_VERSION.to_string())]]),
        other => panic!("{other:?}"),
    }
    c.quit().await;
    f.wait_for_commands(3, WAIT).unwrap();
    // The login announced exactly Atlas's three capabilities, and the client
    // sent queries and a COM_QUIT, nothing else (no ping, no @@variables).
    let logins = f.logins();
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].capabilities, CAPS);
    assert_eq!(logins[0].error, None);
    let received: Vec<Command> = f.received().into_iter().map(|r| r.command).collect();
    assert_eq!(
        received,
        vec![
            Command::Query("SELECT * FROM backends".into()),
            Command::Query("SELECT VERSION".into()),
            Command::Quit
        ]
    );
}

#[tokio::test]
async fn wrong_user_and_wrong_password_are_refused() {
    let f = fixture(&[vip()], &[]);
    let addr = f.addr();
    for (user, password, message) in [
        ("root", f.password().to_string(), fx::MSG_UNKNOWN_USER),
        (f.user(), "wrong".to_string(), fx::MSG_BAD_PASSWORD),
    ] {
        let err = AdminConnection::connect(addr, user, &Password::new(password), TIMEOUTS)
            .await
            .unwrap_err();
        let text = err.to_string();
        match err {
            ClientError::Login { error, .. } => {
                assert_eq!(error.code, 1045);
                assert_eq!(error.sqlstate, "28000");
                assert_eq!(error.message, message);
            }
            other => panic!("expected a login refusal, got {other}"),
        }
        assert!(text.contains("password_file"), "says what to check: {text}");
        assert!(!text.contains("wrong"), "never shows the password: {text}");
    }
    assert_eq!(f.commands_received(), 0);
    // And the connection is closed after the refusal.
    let (mut raw, reply) = Raw::login(&f, "root", "x", CAPS);
    assert_eq!(err_message(&reply.unwrap()).2, fx::MSG_UNKNOWN_USER);
    assert!(raw.closed());
}

#[tokio::test]
async fn fixture_rejects_what_atlas_rejects() {
    let f = fixture(&[vip()], &[replica()]);

    // COM_PING (what pooled clients send): refused; other commands too;
    // COM_INIT_DB is accepted. The connection stays usable.
    let (mut raw, reply) = Raw::login(&f, f.user(), f.password(), CAPS);
    assert_eq!(reply.unwrap()[0], 0x00, "login OK");
    let ping = raw.command(&[fx::COM_PING]).unwrap();
    assert_eq!(
        err_message(&ping),
        (1105, "07000".into(), fx::MSG_PING.into())
    );
    let stats = raw.command(&[0x09]).unwrap();
    assert_eq!(err_message(&stats).2, fx::MSG_UNKNOWN_COM);
    assert_eq!(raw.command(b"\x02mysql").unwrap()[0], 0x00);

    // A client without PROTOCOL_41 is dropped without an answer.
    let (mut old, reply) = Raw::login(&f, f.user(), f.password(), CAPS & !fx::CLIENT_PROTOCOL_41);
    assert_eq!(reply, None);
    assert!(old.closed());

    let mut c = login(&f).await;
    for q in [
        "SELECT * FROM backends;",
        " SELECT * FROM backends",
        "SELECT * FROM backends ",
        "SELECT @@max_allowed_packet, @@wait_timeout",
        "ADD SLAVE server2:3306",
        "ADD SLAVE 203.0.113.12:3306@2",
        "ADD SLAVE 203.0.113.12",
        "SHOW SLAVE STATUS",
    ] {
        let (command, code, state, message) = refused(c.query(q).await.unwrap_err());
        assert_eq!(command, q);
        assert_eq!((code, state.as_str()), (1105, "07000"), "{q}");
        assert_eq!(message, fx::MSG_UNMATCHED, "{q}");
    }
    for (q, message) in [
        ("REMOVE BACKEND 0", fx::MSG_BAD_INDEX),
        ("REMOVE BACKEND 3", fx::MSG_BAD_INDEX),
        ("SET ONLINE 9", fx::MSG_NO_SUCH_ID),
        ("SET SIDEWAYS 1", fx::MSG_BAD_OPERATION),
    ] {
        assert_eq!(refused(c.query(q).await.unwrap_err()).3, message, "{q}");
    }
    // Case and runs of blanks between words are fine (Lua's %s+).
    assert_eq!(
        c.query("select  *\tfrom BACKENDS").await.unwrap(),
        c.query("SELECT * FROM backends").await.unwrap()
    );
    // Nothing above changed the table.
    assert_eq!(f.table().len(), 2);
    assert_eq!(f.history().len(), 1, "{:?}", f.history());
    c.quit().await;
}

#[tokio::test]
async fn fixture_table_semantics_match_atlas() {
    let f = fixture(&[], &[replica()]);
    let mut c = login(&f).await;
    let status_only = |r: Reply| match r {
        Reply::Rows(rs) => {
            assert_eq!(rs.columns.len(), 1);
            assert_eq!(rs.columns[0].name, "status");
            assert!(rs.rows.is_empty());
        }
        other => panic!("{other:?}"),
    };
    // A duplicate add gets the same success reply and changes nothing.
    status_only(c.query(&format!("ADD SLAVE {}", replica())).await.unwrap());
    assert_eq!(f.table().len(), 1);
    // An rw backend takes the first ro entry's index; that entry moves to the end.
    status_only(c.query("ADD SLAVE 203.0.113.13:3306").await.unwrap());
    status_only(c.query(&format!("ADD MASTER {}", vip())).await.unwrap());
    let order: Vec<(String, Kind, State)> = c
        .backends()
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.address.to_string(), b.kind, b.state))
        .collect();
    assert_eq!(
        order,
        vec![
            (vip().to_string(), Kind::Rw, State::Unknown),
            ("203.0.113.13:3306".into(), Kind::Ro, State::Unknown),
            (replica().to_string(), Kind::Ro, State::Unknown),
        ]
    );
    // An address Atlas cannot parse is "added" with success, and ignored.
    status_only(c.query("ADD SLAVE 999.1.1.1:3306").await.unwrap());
    assert_eq!(f.table().len(), 3);
    // SET OFFLINE / ONLINE answer with the row.
    match c.query("SET OFFLINE 2").await.unwrap() {
        Reply::Rows(rs) => assert_eq!(rs.rows[0][2].as_deref(), Some("offline")),
        other => panic!("{other:?}"),
    }
    c.query("SET ONLINE 2").await.unwrap();
    assert_eq!(f.table()[1].state, State::Unknown);
    // REMOVE shifts later indices down.
    status_only(c.query("REMOVE BACKEND 2").await.unwrap());
    assert_eq!(f.table()[1].address, replica());
    assert_eq!(f.table()[1].ndx, 2);
    match c.query("SELECT * FROM help").await.unwrap() {
        Reply::Rows(rs) => {
            assert_eq!(rs.columns.len(), 2);
            assert!(rs.rows.len() > 5);
        }
        other => panic!("{other:?}"),
    }
    c.quit().await;
}

// ---- the reconciler --------------------------------------------------------

#[tokio::test]
async fn empty_table_gets_rw_first_then_ro_then_save_config() {
    let dir = TempDir::new("empty");
    let cnf = dir.0.join("my.cnf");
    let f = AtlasFixture::new(FixtureConfig {
        cnf_path: Some(cnf.clone()),
        ..Default::default()
    })
    .unwrap();
    assert!(f.table().is_empty());
    // The whole path from the config section and a 0600 password file.
    let pw = dir.0.join("atlas-password");
    std::fs::write(&pw, format!("{}\n", f.password())).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = AtlasConfig {
        admin_address: f.addr(),
        user: f.user().into(),
        password_file: pw,
        rw_backend: None,
        persist: AtlasPersist::SaveConfig,
        cnf_path: None,
        period_ms: 200,
        connect_timeout_ms: 2000,
        query_timeout_ms: 2000,
    };
    let h = AtlasReconciler::spawn(Settings::from_config(&cfg).unwrap());
    let want = Desired {
        rw: cfg.rw_backend_or(ha_lab::INSIDE_VIP),
        ro: vec![replica()],
    };
    h.set_desired(want.clone());
    let st = wait_status(&h, "the table in sync", |s| s.in_sync).await;
    assert_eq!(st.steps_applied, 2);
    assert!(in_sync(&f.table(), &want));
    assert_eq!(
        changes_sent(&f),
        vec![
            format!("ADD MASTER {}", vip()),
            format!("ADD SLAVE {}", replica()),
            "SAVE CONFIG".to_string()
        ]
    );
    // Never a COM_PING, and nothing the admin port refused.
    for r in f.received() {
        assert!(
            matches!(r.command, Command::Query(_) | Command::Quit),
            "{r:?}"
        );
        assert_eq!(r.error, None, "{r:?}");
    }
    // SAVE CONFIG rewrote the .cnf: a restarted Atlas starts from it.
    let text = std::fs::read_to_string(&cnf).unwrap();
    assert!(
        text.contains(&format!("proxy-backend-addresses={}\n", vip())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "proxy-read-only-backend-addresses={}\n",
            replica()
        )),
        "{text}"
    );
    assert!(text.contains("pwds = root:"), "other lines kept: {text}");
    drop(h);
    f.stop();
    f.start().unwrap();
    assert!(in_sync(&f.table(), &want), "{:?}", f.table());
    assert_rw_never_absent(&f);
}

#[tokio::test]
async fn failover_removes_the_replica_and_its_return_adds_it_back() {
    let f = fixture(&[vip()], &[replica()]);
    let h = AtlasReconciler::spawn(settings(&f, Persist::SaveConfig));
    h.set_desired(desired(&[replica()]));
    let st = wait_status(&h, "the initial table in sync", |s| s.in_sync).await;
    assert_eq!(st.steps_applied, 0, "already right: no change");

    // Failover: no replica any more.
    let t0 = Instant::now();
    h.set_desired(desired(&[]));
    let st = wait_status(&h, "the replica removed", |s| {
        s.in_sync && !s.table.iter().any(|b| b.address == replica())
    })
    .await;
    let gone = t0.elapsed();
    println!("failover: stale ro backend gone {gone:?} after set_desired (period 200 ms)");
    assert_eq!(st.steps_applied, 1);
    assert_eq!(
        f.table()
            .iter()
            .map(|b| (b.address, b.kind))
            .collect::<Vec<_>>(),
        vec![(vip(), Kind::Rw)]
    );

    // The replica caught up again: back as ro.
    let t1 = Instant::now();
    h.set_desired(desired(&[replica()]));
    wait_status(&h, "the replica back", |s| {
        s.in_sync && s.table.iter().any(|b| b.address == replica())
    })
    .await;
    println!(
        "return: ro backend back {:?} after set_desired",
        t1.elapsed()
    );
    assert!(in_sync(&f.table(), &desired(&[replica()])));
    assert_eq!(
        changes_sent(&f),
        vec![
            "SAVE CONFIG".to_string(),
            "REMOVE BACKEND 2".to_string(),
            "SAVE CONFIG".to_string(),
            format!("ADD SLAVE {}", replica()),
            "SAVE CONFIG".to_string(),
        ]
    );
    assert_rw_never_absent(&f);
}

#[tokio::test]
async fn rw_entry_removed_by_hand_is_added_back() {
    let f = fixture(&[vip()], &[replica()]);
    let h = AtlasReconciler::spawn(settings(&f, Persist::None));
    h.set_desired(desired(&[replica()]));
    wait_status(&h, "in sync", |s| s.in_sync).await;
    let rounds = h.status().rounds;

    let t0 = Instant::now();
    f.edit("operator: REMOVE BACKEND 1", |b| b.remove(1).unwrap());
    let st = wait_status(&h, "the rw entry back", |s| {
        s.rounds > rounds && s.in_sync && s.steps_applied == 1
    })
    .await;
    println!(
        "operator removed the rw entry: back {:?} later (period 200 ms)",
        t0.elapsed()
    );
    assert_eq!(
        changes_sent(&f),
        vec![format!("ADD MASTER {}", vip())],
        "persist = none: no SAVE CONFIG"
    );
    // ADD MASTER with an ro entry present: the rw entry takes index 1.
    assert_eq!(st.table[0].address, vip());
    assert_eq!(st.table[0].kind, Kind::Rw);
    assert_rw_never_absent(&f);
}

#[tokio::test]
async fn atlas_down_at_start_then_up_converges_and_status_shows_the_error() {
    // Before the failover Atlas listed the old primary as rw.
    let f = AtlasFixture::new_stopped(FixtureConfig {
        rw: vec![old_primary()],
        ro: vec![replica()],
        ..Default::default()
    })
    .unwrap();
    let h = AtlasReconciler::spawn(settings(&f, Persist::SaveConfig));
    let t0 = Instant::now();
    h.set_desired(desired(&[replica()]));
    let st = wait_status(&h, "three failed attempts", |s| s.consecutive_failures >= 3).await;
    println!(
        "Atlas down: {} failed attempts in {:?} (backoff 50, 100, 200 ms...)",
        st.consecutive_failures,
        t0.elapsed()
    );
    assert!(!st.reachable);
    assert!(!st.in_sync);
    let err = st.last_error.unwrap();
    assert!(err.contains("cannot connect"), "{err}");
    assert!(err.contains(&f.addr().to_string()), "{err}");

    let t1 = Instant::now();
    f.start().unwrap();
    let st = wait_status(&h, "in sync after Atlas started", |s| s.in_sync).await;
    println!("Atlas started: table right {:?} later", t1.elapsed());
    assert!(st.reachable);
    assert_eq!(st.consecutive_failures, 0);
    assert!(st.last_ok_at.is_some());
    // The desired rw was added before the wrong one was removed.
    assert_eq!(
        changes_sent(&f),
        vec![
            format!("ADD MASTER {}", vip()),
            "REMOVE BACKEND 1".to_string(),
            "SAVE CONFIG".to_string()
        ]
    );
    assert_eq!(
        f.table()
            .iter()
            .map(|b| (b.address, b.kind))
            .collect::<Vec<_>>(),
        vec![(vip(), Kind::Rw), (replica(), Kind::Ro)]
    );
    assert_rw_never_absent(&f);
}

#[tokio::test]
async fn duplicate_add_is_ignored_and_reading_back_converges() {
    let f = fixture(&[vip()], &[]);
    // An operator adds the replica a moment before the agent does: Atlas
    // ignores the agent's ADD SLAVE (duplicate) but answers success.
    f.before_next("add slave", |b| {
        b.add(replica(), Kind::Ro);
    });
    let h = AtlasReconciler::spawn(settings(&f, Persist::None));
    h.set_desired(desired(&[replica()]));
    let st = wait_status(&h, "in sync", |s| s.in_sync).await;
    assert_eq!(st.consecutive_failures, 0);
    assert_eq!(changes_sent(&f), vec![format!("ADD SLAVE {}", replica())]);
    assert_eq!(
        f.table().iter().filter(|b| b.address == replica()).count(),
        1
    );
    // The ADD itself changed nothing; the read-back saw the operator's entry.
    assert!(f
        .history()
        .iter()
        .all(|c| !c.cause.starts_with("ADD SLAVE")));
}

#[tokio::test]
async fn a_step_atlas_ignores_is_reported_then_retried() {
    let f = fixture(&[vip()], &[]);
    // The agent's ADD SLAVE is a duplicate (an operator added the replica),
    // and the operator removes it again before the agent reads back: the
    // table is unchanged, which the agent must notice rather than trust the
    // success reply.
    // Hooks fire one per query, in order: the first SELECT sees the table
    // as it is, the ADD is made a duplicate, the read-back sees it removed.
    f.before_next("select * from backends", |_| {});
    f.before_next("add slave", |b| {
        b.add(replica(), Kind::Ro);
    });
    f.before_next("select * from backends", |b| {
        let _ = b.remove(2);
    });
    let h = AtlasReconciler::spawn(settings(&f, Persist::None));
    h.set_desired(desired(&[replica()]));
    let st = wait_status(&h, "in sync", |s| s.in_sync).await;
    let errors: Vec<String> = f.received().into_iter().filter_map(|r| r.error).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let last = st.last_error.expect("the ignored step was reported");
    assert!(
        last.contains(&format!("`ADD SLAVE {}`", replica())) && last.contains("did not change"),
        "{last}"
    );
    assert_eq!(
        f.table().iter().filter(|b| b.address == replica()).count(),
        1
    );
    assert_rw_never_absent(&f);
}

#[tokio::test]
async fn refused_command_is_reported_with_atlas_answer() {
    let f = fixture(&[vip()], &[replica()]);
    // The operator removes the replica just before the agent's REMOVE BACKEND 2.
    f.before_next("remove backend", |b| {
        let _ = b.remove(2);
    });
    let h = AtlasReconciler::spawn(settings(&f, Persist::None));
    h.set_desired(desired(&[]));
    let st = wait_status(&h, "in sync after the refusal", |s| {
        s.in_sync && s.last_error.is_some()
    })
    .await;
    let err = st.last_error.unwrap();
    assert!(
        err.contains("refused `REMOVE BACKEND 2`: error 1105 (07000): invalid backend_id"),
        "{err}"
    );
    let sent = st
        .recent
        .iter()
        .find(|c| c.command == "REMOVE BACKEND 2")
        .unwrap();
    assert!(sent
        .error
        .as_deref()
        .unwrap()
        .contains("invalid backend_id"));
    assert_eq!(f.table().len(), 1);
}

#[tokio::test]
async fn persist_cnf_rewrites_the_backend_lines_itself() {
    let dir = TempDir::new("cnf");
    let cnf = dir.0.join("my.cnf");
    let f = AtlasFixture::new(FixtureConfig {
        rw: vec![vip()],
        ro: vec![replica()],
        cnf_path: Some(cnf.clone()),
        ..Default::default()
    })
    .unwrap();
    let h = AtlasReconciler::spawn(settings(&f, Persist::Cnf(cnf.clone())));
    h.set_desired(desired(&[]));
    let st = wait_status(&h, "in sync", |s| s.in_sync).await;
    assert!(st.recent.iter().any(|c| c.command.starts_with("rewrite ")));
    assert!(!f.queries().iter().any(|q| q == "SAVE CONFIG"));
    let text = std::fs::read_to_string(&cnf).unwrap();
    assert!(
        text.contains(&format!("\nproxy-backend-addresses = {}\n", vip())),
        "{text}"
    );
    assert!(
        text.contains("\nproxy-read-only-backend-addresses = \n"),
        "{text}"
    );
    assert!(
        text.contains("# written by the ha-lab Atlas fixture"),
        "comments kept"
    );
    drop(h);
    f.stop();
    f.start().unwrap();
    assert_eq!(
        f.table().iter().map(|b| b.address).collect::<Vec<_>>(),
        vec![vip()]
    );
}

#[tokio::test]
async fn wrong_password_shows_in_status() {
    let f = fixture(&[vip()], &[]);
    let mut s = settings(&f, Persist::None);
    s.password = Password::new("not-it");
    let h = AtlasReconciler::spawn(s);
    h.set_desired(desired(&[]));
    let st = wait_status(&h, "two failures", |s| s.consecutive_failures >= 2).await;
    assert!(!st.reachable);
    let err = st.last_error.unwrap();
    assert!(err.contains("password doesn't match"), "{err}");
    assert!(!err.contains("not-it"), "never shows the password: {err}");
}

#[tokio::test]
async fn a_new_wish_mid_round_stops_the_old_plan() {
    let f = fixture(&[vip()], &[]);
    let r2: SocketAddrV4 = "203.0.113.13:3306".parse().unwrap();
    let h = AtlasReconciler::spawn(settings(&f, Persist::None));
    // While Atlas handles the first ADD SLAVE, a failover makes both replicas
    // unwanted: the second ADD SLAVE of the old plan must not be sent.
    let h2 = h.clone();
    f.before_next("add slave", move |_| {
        h2.set_desired(desired(&[]));
    });
    h.set_desired(desired(&[replica(), r2]));
    wait_status(&h, "in sync with the new wish", |s| {
        s.in_sync && s.desired == Some(desired(&[]))
    })
    .await;
    assert_eq!(
        changes_sent(&f),
        vec![
            format!("ADD SLAVE {}", replica()),
            "REMOVE BACKEND 2".into()
        ]
    );
    assert_eq!(
        f.table().iter().map(|b| b.address).collect::<Vec<_>>(),
        vec![vip()]
    );
}
