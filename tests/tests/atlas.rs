//! Atlas admin client and reconciler against the fixture Atlas (loopback
//! only, no privileges: these run with plain `cargo test`). The backends
//! are fake MySQL servers on loopback ([`FakeBackend`]), so the fixture's
//! checker marks them `up` as Atlas's would, and its proxy port routes to
//! them.
//!
//! Waiting is done on the reconciler's status channel (notified on every
//! change), never by sleeping; times are measured and printed, not asserted.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ha_agent::drivers::atlas::client::{AdminConnection, ClientError, Reply, Timeouts};
use ha_agent::drivers::atlas::{
    in_sync, AtlasHandle, AtlasReconciler, AtlasStatus, Backend, Desired, Kind, Password, Persist,
    Settings, State,
};
use ha_agent::operator::config::{AtlasConfig, AtlasPersist};
use ha_lab::atlas_fixture::{self as fx, AtlasFixture, Command, FakeBackend, FixtureConfig};

const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(2),
    query: Duration::from_secs(2),
};
const WAIT: Duration = Duration::from_secs(20);
/// The fixture's checker period in these tests (Atlas: 4 s).
const CHECKER: Duration = Duration::from_millis(50);
const APP: (&str, &str) = ("app", "app-pw");

fn me() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The MySQL servers of a test: the inside VIP's, the replica, the old
/// primary and a second replica, each a fake server on loopback.
struct Net {
    vip: FakeBackend,
    replica: FakeBackend,
    old: FakeBackend,
    other: FakeBackend,
}

impl Net {
    fn new() -> Net {
        let b = |id| FakeBackend::start(id, APP).unwrap();
        Net {
            vip: b(100),
            replica: b(12),
            old: b(11),
            other: b(13),
        }
    }
    fn vip(&self) -> SocketAddrV4 {
        self.vip.addr()
    }
    fn replica(&self) -> SocketAddrV4 {
        self.replica.addr()
    }
    fn old_primary(&self) -> SocketAddrV4 {
        self.old.addr()
    }
    fn other(&self) -> SocketAddrV4 {
        self.other.addr()
    }
    fn desired(&self, ro: &[SocketAddrV4]) -> Desired {
        Desired {
            rw: self.vip(),
            ro: ro.to_vec(),
        }
    }
}

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

fn config(rw: &[SocketAddrV4], ro: &[SocketAddrV4]) -> FixtureConfig {
    FixtureConfig {
        rw: rw.to_vec(),
        ro: ro.to_vec(),
        checker: Some(CHECKER),
        proxy_users: vec![(APP.0.into(), APP.1.into())],
        ..Default::default()
    }
}

fn fixture(rw: &[SocketAddrV4], ro: &[SocketAddrV4]) -> AtlasFixture {
    AtlasFixture::new(config(rw, ro)).unwrap()
}

async fn login(f: &AtlasFixture) -> AdminConnection {
    AdminConnection::connect(
        f.addr(),
        f.user(),
        &Password::new(f.password()),
        me(),
        TIMEOUTS,
    )
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
        admin_uid: me(),
        ro_weights: BTreeMap::new(),
        rw_not_up_alarm: Duration::from_secs(10),
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

/// Waits for `pred` on the fixture's table (changed by its checker thread).
fn wait_table(f: &AtlasFixture, what: &str, pred: impl Fn(&[Backend]) -> bool) -> Duration {
    let t0 = Instant::now();
    while !pred(&f.table()) {
        assert!(
            t0.elapsed() < WAIT,
            "no {what} within {WAIT:?}: {:?}",
            f.table()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    t0.elapsed()
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

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// A fixture Atlas with a `.cnf` in `dir`.
fn fixture_with_cnf(dir: &TempDir, cfg: FixtureConfig) -> (AtlasFixture, PathBuf) {
    let cnf = dir.0.join("my.cnf");
    let f = AtlasFixture::new(FixtureConfig {
        cnf_path: Some(cnf.clone()),
        ..cfg
    })
    .unwrap();
    (f, cnf)
}

/// The value of `key` in the `.cnf` (the first such line).
fn cnf_value(path: &Path, key: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
}

// ---- a raw client, to send what the agent's client never sends -----------

struct Raw(TcpStream);

impl Raw {
    /// Logs in with `capabilities`; returns the reply (its packet number and
    /// payload), or None if the server closed the connection without one.
    fn login(
        f: &AtlasFixture,
        user: &str,
        password: &str,
        capabilities: u32,
    ) -> (Raw, Option<(u8, Vec<u8>)>) {
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
        let reply = read_packet(&mut s);
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
    let net = Net::new();
    let f = AtlasFixture::new(FixtureConfig {
        checker: None,
        ..config(&[net.vip()], &[net.replica()])
    })
    .unwrap();
    f.set_state(1, State::Up).unwrap();
    let mut c = login(&f).await;
    assert_eq!(c.server_version(), "5.0.99-agent-admin");
    let table = c.backends().await.unwrap();
    assert_eq!(
        table,
        vec![
            Backend {
                ndx: 1,
                address: net.vip(),
                state: State::Up,
                kind: Kind::Rw
            },
            Backend {
                ndx: 2,
                address: net.replica(),
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
    let net = Net::new();
    let f = fixture(&[net.vip()], &[]);
    let addr = f.addr();
    for (user, password, message) in [
        ("root", f.password().to_string(), fx::MSG_UNKNOWN_USER),
        (f.user(), "wrong".to_string(), fx::MSG_BAD_PASSWORD),
    ] {
        let err = AdminConnection::connect(addr, user, &Password::new(password), me(), TIMEOUTS)
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
    assert_eq!(err_message(&reply.unwrap().1).2, fx::MSG_UNKNOWN_USER);
    assert!(raw.closed());
}

#[tokio::test]
async fn no_scramble_goes_to_an_admin_port_of_another_user() {
    let net = Net::new();
    let f = fixture(&[net.vip()], &[]);
    let err = AdminConnection::connect(
        f.addr(),
        f.user(),
        &Password::new(f.password()),
        me() + 1,
        TIMEOUTS,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ClientError::NotAtlasOwner { uid, expected, .. } if uid == me() && expected == me() + 1),
        "{err}"
    );
    // The fixture never saw a login packet.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(f.logins(), vec![]);
    // The reconciler says so in its status.
    let mut s = settings(&f, Persist::None);
    s.admin_uid = me() + 1;
    let h = AtlasReconciler::spawn(s);
    h.set_desired(net.desired(&[]));
    let st = wait_status(&h, "a failure", |s| s.consecutive_failures >= 1).await;
    let e = st.last_error.unwrap();
    assert!(
        e.contains(&format!("process of uid {}", me())) && e.contains("admin_uid"),
        "{e}"
    );
    assert_eq!(f.logins(), vec![]);
}

#[tokio::test]
async fn fixture_rejects_what_atlas_rejects() {
    let net = Net::new();
    let f = fixture(&[net.vip()], &[net.replica()]);
    // The checker's first pass now: left to its thread (1 s after the
    // start, as Atlas does), it once came between the two reads of the
    // table compared below and changed a state from "unknown" to "up".
    f.check_now();

    // Every command but COM_QUERY and COM_QUIT gets the admin script's
    // error (COM_INIT_DB too: a real Atlas 2.2.2 refuses it); the
    // connection stays usable.
    let (mut raw, reply) = Raw::login(&f, f.user(), f.password(), CAPS);
    assert_eq!(reply.unwrap().1[0], 0x00, "login OK");
    for (name, packet) in [
        ("COM_PING", vec![fx::COM_PING]),
        ("COM_INIT_DB", b"\x02mysql".to_vec()),
        ("COM_STATISTICS", vec![fx::COM_STATISTICS]),
        ("COM_FIELD_LIST", b"\x04backends\0".to_vec()),
    ] {
        let p = raw.command(&packet).unwrap();
        assert_eq!(
            err_message(&p),
            (1105, "07000".into(), fx::MSG_NOT_QUERY.into()),
            "{name}"
        );
    }
    // An empty COM_QUERY: the plugin's own error, then the connection closes.
    let p = raw.command(&[fx::COM_QUERY]).unwrap();
    assert_eq!(
        err_message(&p),
        (1105, "07000".into(), fx::MSG_EMPTY_QUERY.into())
    );
    assert!(raw.closed());

    // A client without PROTOCOL_41: ERR 2007 (packet 2, no SQLSTATE
    // marker), then the connection is closed.
    let (mut old, reply) = Raw::login(&f, f.user(), f.password(), CAPS & !fx::CLIENT_PROTOCOL_41);
    let (seq, p) = reply.expect("an ERR packet before the close");
    assert_eq!(seq, 2);
    assert_eq!(p[0], 0xFF);
    assert_eq!(u16::from_le_bytes([p[1], p[2]]), 2007);
    assert_eq!(&p[3..], fx::MSG_OLD_PROTOCOL.as_bytes());
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
    // Nothing above changed the table (the checker only changed states).
    assert_eq!(f.table().len(), 2);
    assert!(
        f.history()
            .iter()
            .skip(1)
            .all(|c| c.cause.starts_with("checker")),
        "{:?}",
        f.history()
    );
    c.quit().await;
}

#[tokio::test]
async fn fixture_table_semantics_match_atlas() {
    let net = Net::new();
    let f = fixture(&[], &[net.replica()]);
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
    status_only(
        c.query(&format!("ADD SLAVE {}", net.replica()))
            .await
            .unwrap(),
    );
    assert_eq!(f.table().len(), 1);
    // An rw backend takes the first ro entry's index; that entry moves to the end.
    status_only(
        c.query(&format!("ADD SLAVE {}", net.other()))
            .await
            .unwrap(),
    );
    status_only(c.query(&format!("ADD MASTER {}", net.vip())).await.unwrap());
    let order: Vec<(SocketAddrV4, Kind)> = c
        .backends()
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.address, b.kind))
        .collect();
    assert_eq!(
        order,
        vec![
            (net.vip(), Kind::Rw),
            (net.other(), Kind::Ro),
            (net.replica(), Kind::Ro),
        ]
    );
    // An address Atlas cannot parse is "added" with success, and ignored.
    status_only(c.query("ADD SLAVE 999.1.1.1:3306").await.unwrap());
    assert_eq!(f.table().len(), 3);
    // SET OFFLINE / ONLINE answer with the row; offline stays offline.
    match c.query("SET OFFLINE 2").await.unwrap() {
        Reply::Rows(rs) => assert_eq!(rs.rows[0][2].as_deref(), Some("offline")),
        other => panic!("{other:?}"),
    }
    f.check_now();
    assert_eq!(f.table()[1].state, State::Offline);
    match c.query("SET ONLINE 2").await.unwrap() {
        Reply::Rows(rs) => assert_eq!(rs.rows[0][2].as_deref(), Some("unknown")),
        other => panic!("{other:?}"),
    }
    // REMOVE shifts later indices down.
    status_only(c.query("REMOVE BACKEND 2").await.unwrap());
    assert_eq!(f.table()[1].address, net.replica());
    assert_eq!(f.table()[1].ndx, 2);
    match c.query("SELECT * FROM help").await.unwrap() {
        Reply::Rows(rs) => {
            let names: Vec<&str> = rs.columns.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, vec!["command", "description"]);
            assert_eq!(rs.rows.len(), 16, "Atlas 2.2.2's help has 16 rows");
            let cmds: Vec<&str> = rs.rows.iter().filter_map(|r| r[0].as_deref()).collect();
            assert!(cmds.contains(&"ADD ENPWD $pwd") && cmds.contains(&"SELECT VERSION"));
        }
        other => panic!("{other:?}"),
    }
    c.quit().await;
}

#[tokio::test]
async fn fixture_checker_marks_backends_up_only_at_its_ticks_and_the_proxy_follows() {
    let net = Net::new();
    let period = Duration::from_millis(400);
    let f = AtlasFixture::new(FixtureConfig {
        checker: Some(period),
        proxy_address: Some("127.0.0.1:0".parse().unwrap()),
        ..config(&[net.vip()], &[])
    })
    .unwrap();
    let proxy = match f.proxy_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let up =
        |b: &[Backend], a: SocketAddrV4| b.iter().any(|x| x.address == a && x.state == State::Up);
    wait_table(&f, "the rw backend up", |t| up(t, net.vip()));
    let server_id = || -> Option<String> {
        let fx::wire::Login::Ok(s) =
            fx::wire::client_login(proxy, APP.0, APP.1, None, Duration::from_secs(1)).ok()?
        else {
            return None;
        };
        fx::wire::first_value(&fx::wire::command(&s, b"\x03SELECT @@server_id").ok()?)
    };
    // No ro backend up: reads go to the rw backend.
    assert_eq!(server_id().as_deref(), Some("100"));
    let mut c = login(&f).await;
    c.query(&format!("ADD SLAVE {}", net.replica()))
        .await
        .unwrap();
    let added = Instant::now();
    assert_eq!(
        f.table()[1].state,
        State::Unknown,
        "new backends start unknown"
    );
    // Until a tick marks it up, the replica serves nothing.
    let mut served_by_rw_before_up = 0;
    while f.table()[1].state != State::Up {
        assert!(added.elapsed() < WAIT);
        if server_id().as_deref() == Some("100") && f.table()[1].state != State::Up {
            served_by_rw_before_up += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = added.elapsed();
    println!("ADD SLAVE -> up {took:?} (checker period {period:?}); {served_by_rw_before_up} reads served by the rw backend meanwhile");
    assert!(took <= period + Duration::from_millis(300), "{took:?}");
    assert_eq!(
        server_id().as_deref(),
        Some("12"),
        "reads now go to the replica"
    );
    // The replica dies: the proxy's failed connection marks it down, reads
    // fall back to the rw backend; the checker brings it back.
    net.replica.stop();
    assert_eq!(
        server_id(),
        None,
        "the read that hit the dead replica lost its connection"
    );
    assert_eq!(f.table()[1].state, State::Down);
    assert_eq!(server_id().as_deref(), Some("100"));
    net.replica.resume().unwrap();
    wait_table(&f, "the replica up again", |t| up(t, net.replica()));
    // No rw backend up: writes lose their connection (ERROR 2013).
    c.query("REMOVE BACKEND 1").await.unwrap();
    let fx::wire::Login::Ok(s) =
        fx::wire::client_login(proxy, APP.0, APP.1, None, Duration::from_secs(1)).unwrap()
    else {
        panic!("login refused");
    };
    assert!(fx::wire::command(&s, b"\x03INSERT INTO t VALUES (1)").is_err());
    c.quit().await;
}

#[tokio::test]
async fn fixture_save_config_rewrites_the_whole_file_like_atlas() {
    let dir = TempDir::new("glib");
    let net = Net::new();
    let (f, cnf) = fixture_with_cnf(&dir, config(&[net.vip()], &[]));
    // An operator's file: spaces around '=', a host name and a weight.
    let port = net.replica().port();
    std::fs::write(
        &cnf,
        format!(
            "[mysql-proxy]\n# the backends\nproxy-backend-addresses = {}\nproxy-read-only-backend-addresses = localhost:{port}@2\nadmin-username = {}\nadmin-password = {}\npwds = app:qtyU1btXOo074Itvx0UR9Q==\n",
            net.vip(),
            f.user(),
            f.password()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cnf, std::fs::Permissions::from_mode(0o600)).unwrap();
    f.stop();
    f.start().unwrap();
    // The host name shows as its address, with its weight.
    let e = f.entries();
    assert_eq!(e[1].address, format!("127.0.0.1:{port}").parse().unwrap());
    assert_eq!(e[1].weight, 2);
    let mut c = login(&f).await;
    c.query("SAVE CONFIG").await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&cnf).unwrap(),
        format!(
            "[mysql-proxy]\n# the backends\nproxy-backend-addresses={}\nproxy-read-only-backend-addresses=127.0.0.1:{port}\nadmin-username={}\nadmin-password={}\npwds=app:qtyU1btXOo074Itvx0UR9Q==\nclient-ips=\n",
            net.vip(),
            f.user(),
            f.password()
        )
    );
    assert_eq!(
        mode(&cnf),
        0o644,
        "readable by every user, as Atlas leaves it"
    );
    // A missing file: success, and only a log line.
    std::fs::remove_file(&cnf).unwrap();
    c.query("SAVE CONFIG").await.unwrap();
    assert_eq!(f.save_errors().len(), 1, "{:?}", f.save_errors());
    assert!(!cnf.exists());
    c.quit().await;
}

// ---- the reconciler --------------------------------------------------------

#[tokio::test]
async fn empty_table_gets_rw_first_then_ro_then_save_config_and_the_mode_back() {
    let dir = TempDir::new("empty");
    let net = Net::new();
    let (f, cnf) = fixture_with_cnf(&dir, config(&[], &[]));
    assert!(f.table().is_empty());
    // The whole path from the config section and a 0600 password file.
    let pw = dir.0.join("atlas-password");
    std::fs::write(&pw, format!("{}\n", f.password())).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = AtlasConfig {
        admin_address: f.addr(),
        user: f.user().into(),
        password_file: pw,
        rw_backend: Some(net.vip()),
        persist: AtlasPersist::SaveConfig,
        cnf_path: Some(cnf.clone()),
        ro_weights: BTreeMap::new(),
        rw_not_up_alarm_ms: 10_000,
        admin_uid: me(),
        period_ms: 200,
        connect_timeout_ms: 2000,
        query_timeout_ms: 2000,
    };
    let h = AtlasReconciler::spawn(Settings::from_config(&cfg).unwrap());
    let want = net.desired(&[net.replica()]);
    h.set_desired(want.clone());
    let st = wait_status(&h, "the table in sync", |s| s.in_sync).await;
    assert_eq!(st.steps_applied, 2);
    assert!(in_sync(&f.table(), &want));
    assert_eq!(
        changes_sent(&f),
        vec![
            format!("ADD MASTER {}", net.vip()),
            format!("ADD SLAVE {}", net.replica()),
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
    // SAVE CONFIG rewrote the .cnf (GLib style), the agent put its mode back.
    assert_eq!(mode(&cnf), 0o600);
    assert_eq!(
        cnf_value(&cnf, "proxy-backend-addresses"),
        Some(net.vip().to_string())
    );
    assert_eq!(
        cnf_value(&cnf, "proxy-read-only-backend-addresses"),
        Some(net.replica().to_string())
    );
    assert!(
        std::fs::read_to_string(&cnf)
            .unwrap()
            .contains("\nclient-ips=\n"),
        "Atlas's rewrite"
    );
    assert_eq!(st.persists, 1);
    drop(h);
    f.stop();
    f.start().unwrap();
    assert!(in_sync(&f.table(), &want), "{:?}", f.table());
    assert_rw_never_absent(&f);
}

#[tokio::test]
async fn failover_removes_the_replica_and_its_return_adds_it_back() {
    let dir = TempDir::new("failover");
    let net = Net::new();
    let (f, cnf) = fixture_with_cnf(&dir, config(&[net.vip()], &[net.replica()]));
    let h = AtlasReconciler::spawn(settings(&f, Persist::SaveConfig(cnf.clone())));
    h.set_desired(net.desired(&[net.replica()]));
    let st = wait_status(&h, "the initial table in sync", |s| s.in_sync).await;
    assert_eq!(st.steps_applied, 0, "already right: no change");

    // Failover: no replica any more.
    let t0 = Instant::now();
    h.set_desired(net.desired(&[]));
    let st = wait_status(&h, "the replica removed", |s| {
        s.in_sync && !s.table.iter().any(|b| b.address == net.replica())
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
        vec![(net.vip(), Kind::Rw)]
    );

    // The replica caught up again: back as ro, then serving.
    let t1 = Instant::now();
    h.set_desired(net.desired(&[net.replica()]));
    wait_status(&h, "the replica back", |s| {
        s.in_sync && s.table.iter().any(|b| b.address == net.replica())
    })
    .await;
    let listed = t1.elapsed();
    let st = wait_status(&h, "the replica serving", |s| {
        s.serving
            .iter()
            .any(|e| e.address == net.replica() && e.serving)
    })
    .await;
    let entry = st
        .serving
        .iter()
        .find(|e| e.address == net.replica())
        .unwrap();
    println!(
        "return: ro backend listed {listed:?} after set_desired, serving {:?} (the agent measured {:?} ms from listed to up; fixture checker {CHECKER:?})",
        t1.elapsed(),
        entry.time_to_serving_ms
    );
    assert!(entry.time_to_serving_ms.is_some());
    assert!(in_sync(&f.table(), &net.desired(&[net.replica()])));
    // Nothing was saved at start (the file was right); each change was.
    assert_eq!(
        changes_sent(&f),
        vec![
            "REMOVE BACKEND 2".to_string(),
            "SAVE CONFIG".to_string(),
            format!("ADD SLAVE {}", net.replica()),
            "SAVE CONFIG".to_string(),
        ]
    );
    assert_eq!(mode(&cnf), 0o600);
    assert_rw_never_absent(&f);
}

#[tokio::test]
async fn rw_entry_removed_by_hand_is_added_back_and_in_sync_waits_until_it_serves() {
    let net = Net::new();
    let f = fixture(&[net.vip()], &[net.replica()]);
    let h = AtlasReconciler::spawn(settings(&f, Persist::None));
    h.set_desired(net.desired(&[net.replica()]));
    wait_status(&h, "in sync", |s| s.in_sync).await;
    let rounds = h.status().rounds;

    // Every status in which the agent says "in sync" must find the rw
    // backend up in Atlas (the fixture's own table, read at that moment).
    let mut w = h.watch();
    let t0 = Instant::now();
    f.edit("operator: REMOVE BACKEND 1", |b| b.remove(1).unwrap());
    let mut checked = 0;
    let mut in_sync_without_up_rw = 0;
    let st = loop {
        tokio::time::timeout(WAIT, w.changed())
            .await
            .expect("a status change")
            .unwrap();
        let st = w.borrow_and_update().clone();
        if st.in_sync && st.rounds > rounds {
            checked += 1;
            let rw_up = f
                .table()
                .iter()
                .any(|b| b.kind == Kind::Rw && b.address == net.vip() && b.state == State::Up);
            if !rw_up {
                in_sync_without_up_rw += 1;
            }
            if st.steps_applied == 1 {
                break st;
            }
        }
    };
    let rw = st.serving.iter().find(|e| e.kind == Kind::Rw).unwrap();
    println!(
        "operator removed the rw entry: in sync (re-added and serving) {:?} later; listed to up {:?} ms (fixture checker {CHECKER:?}); statuses in sync: {checked}, of which with no up rw backend: {in_sync_without_up_rw}",
        t0.elapsed(),
        rw.time_to_serving_ms
    );
    assert_eq!(in_sync_without_up_rw, 0);
    assert!(rw.serving && rw.time_to_serving_ms.is_some(), "{rw:?}");
    assert_eq!(
        changes_sent(&f),
        vec![format!("ADD MASTER {}", net.vip())],
        "persist = none: no SAVE CONFIG"
    );
    // ADD MASTER with an ro entry present: the rw entry takes index 1.
    assert_eq!(st.table[0].address, net.vip());
    assert_eq!(st.table[0].kind, Kind::Rw);
    assert_rw_never_absent(&f);
}

#[tokio::test]
async fn rw_backend_not_up_past_the_bound_raises_an_alarm_until_it_serves_again() {
    let net = Net::new();
    let f = fixture(&[net.vip()], &[]);
    let mut s = settings(&f, Persist::None);
    s.rw_not_up_alarm = Duration::from_millis(500);
    let h = AtlasReconciler::spawn(s);
    h.set_desired(net.desired(&[]));
    wait_status(&h, "in sync", |s| s.in_sync).await;
    // The VIP's MySQL dies and the operator removes and re-adds... the agent
    // re-adds it; the checker finds it down.
    net.vip.stop();
    let t0 = Instant::now();
    f.edit("operator: REMOVE BACKEND 1", |b| b.remove(1).unwrap());
    let st = wait_status(&h, "the alarm", |s| s.rw_alarm.is_some()).await;
    let alarm = st.rw_alarm.clone().unwrap();
    println!("alarm {:?} after the rw entry went: {alarm}", t0.elapsed());
    assert!(t0.elapsed() >= Duration::from_millis(500));
    assert!(
        alarm.contains(&net.vip().to_string()) && alarm.contains("bound 0.5 s"),
        "{alarm}"
    );
    assert!(!st.in_sync && st.listed, "listed, not serving: {st:?}");
    assert!(st.rw_not_up_since.is_some());
    net.vip.resume().unwrap();
    let st = wait_status(&h, "the alarm cleared", |s| {
        s.rw_alarm.is_none() && s.in_sync
    })
    .await;
    assert!(st.rw_not_up_since.is_none());
}

#[tokio::test]
async fn atlas_down_at_start_then_up_converges_and_status_shows_the_error() {
    let net = Net::new();
    // Before the failover Atlas listed the old primary as rw.
    let f = AtlasFixture::new_stopped(config(&[net.old_primary()], &[net.replica()])).unwrap();
    let h = AtlasReconciler::spawn(settings(&f, Persist::None));
    let t0 = Instant::now();
    h.set_desired(net.desired(&[net.replica()]));
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
    println!(
        "Atlas started: table right and rw serving {:?} later",
        t1.elapsed()
    );
    assert!(st.reachable);
    assert_eq!(st.consecutive_failures, 0);
    assert!(st.last_ok_at.is_some());
    // The desired rw was added before the wrong one was removed.
    assert_eq!(
        changes_sent(&f),
        vec![
            format!("ADD MASTER {}", net.vip()),
            "REMOVE BACKEND 1".to_string(),
        ]
    );
    assert_eq!(
        f.table()
            .iter()
            .map(|b| (b.address, b.kind))
            .collect::<Vec<_>>(),
        vec![(net.vip(), Kind::Rw), (net.replica(), Kind::Ro)]
    );
    assert_rw_never_absent(&f);
}

#[tokio::test]
async fn duplicate_add_is_ignored_and_reading_back_converges() {
    let net = Net::new();
    let f = fixture(&[net.vip()], &[]);
    let replica = net.replica();
    // An operator adds the replica a moment before the agent does: Atlas
    // ignores the agent's ADD SLAVE (duplicate) but answers success.
    f.before_next("add slave", move |b| {
        b.add(replica, Kind::Ro);
    });
    let h = AtlasReconciler::spawn(settings(&f, Persist::None));
    h.set_desired(net.desired(&[replica]));
    let st = wait_status(&h, "in sync", |s| s.in_sync).await;
    assert_eq!(st.consecutive_failures, 0);
    assert_eq!(changes_sent(&f), vec![format!("ADD SLAVE {replica}")]);
    assert_eq!(f.table().iter().filter(|b| b.address == replica).count(), 1);
    // The ADD itself changed nothing; the read-back saw the operator's entry.
    assert!(f
        .history()
        .iter()
        .all(|c| !c.cause.starts_with("ADD SLAVE")));
}

#[tokio::test]
async fn a_step_atlas_ignores_is_reported_then_retried() {
    let net = Net::new();
    let f = fixture(&[net.vip()], &[]);
    let replica = net.replica();
    // The agent's ADD SLAVE is a duplicate (an operator added the replica),
    // and the operator removes it again before the agent reads back: the
    // table is unchanged, which the agent must notice rather than trust the
    // success reply.
    // Hooks fire one per query, in order: the first SELECT sees the table
    // as it is, the ADD is made a duplicate, the read-back sees it removed.
    f.before_next("select * from backends", |_| {});
    f.before_next("add slave", move |b| {
        b.add(replica, Kind::Ro);
    });
    f.before_next("select * from backends", |b| {
        let _ = b.remove(2);
    });
    let h = AtlasReconciler::spawn(settings(&f, Persist::None));
    h.set_desired(net.desired(&[replica]));
    let st = wait_status(&h, "in sync", |s| s.in_sync).await;
    let errors: Vec<String> = f.received().into_iter().filter_map(|r| r.error).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let last = st.last_error.expect("the ignored step was reported");
    assert!(
        last.contains(&format!("`ADD SLAVE {replica}`")) && last.contains("did not change"),
        "{last}"
    );
    assert_eq!(f.table().iter().filter(|b| b.address == replica).count(), 1);
    assert_rw_never_absent(&f);
}

#[tokio::test]
async fn refused_command_is_reported_with_atlas_answer() {
    let net = Net::new();
    let f = fixture(&[net.vip()], &[net.replica()]);
    // The operator removes the replica just before the agent's REMOVE BACKEND 2.
    f.before_next("remove backend", |b| {
        let _ = b.remove(2);
    });
    let h = AtlasReconciler::spawn(settings(&f, Persist::None));
    h.set_desired(net.desired(&[]));
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
async fn persist_cnf_rewrites_the_backend_lines_itself_keeping_weights_and_names() {
    let dir = TempDir::new("cnf");
    let net = Net::new();
    let (f, cnf) = fixture_with_cnf(&dir, config(&[net.vip()], &[]));
    let port = net.replica().port();
    let text = format!(
        "[mysql-proxy]\n# written by hand\nproxy-backend-addresses = {}\nproxy-read-only-backend-addresses = localhost:{port}@3\nadmin-username = {}\nadmin-password = {}\n",
        net.vip(),
        f.user(),
        f.password()
    );
    std::fs::write(&cnf, &text).unwrap();
    std::fs::set_permissions(&cnf, std::fs::Permissions::from_mode(0o640)).unwrap();
    f.stop();
    f.start().unwrap();
    let replica: SocketAddrV4 = format!("127.0.0.1:{port}").parse().unwrap();
    let h = AtlasReconciler::spawn(settings(&f, Persist::Cnf(cnf.clone())));
    h.set_desired(net.desired(&[replica]));
    wait_status(&h, "in sync", |s| s.in_sync).await;
    assert_eq!(
        std::fs::read_to_string(&cnf).unwrap(),
        text,
        "right already: untouched"
    );
    // Failover and return, 20 times: the name and the weight come back each time.
    for i in 0..20 {
        h.set_desired(net.desired(&[]));
        let st = wait_status(&h, "rw only", |s| s.in_sync && s.table.len() == 1).await;
        assert_eq!(st.persists, 2 * i + 1);
        assert_eq!(
            cnf_value(&cnf, "proxy-read-only-backend-addresses").as_deref(),
            Some("")
        );
        h.set_desired(net.desired(&[replica]));
        let st = wait_status(&h, "replica back", |s| s.in_sync && s.table.len() == 2).await;
        assert_eq!(st.persists, 2 * i + 2);
        assert_eq!(std::fs::read_to_string(&cnf).unwrap(), text);
        assert_eq!(mode(&cnf), 0o640);
    }
    assert!(!f.queries().iter().any(|q| q == "SAVE CONFIG"));
    drop(h);
    f.stop();
    f.start().unwrap();
    assert_eq!(f.entries()[1].weight, 3);
}

/// The targets: the `.cnf`'s mode and owner unchanged after 100
/// persists through SAVE CONFIG, and the weights kept through every one.
#[tokio::test]
async fn save_config_100_times_keeps_mode_owner_and_weights() {
    let dir = TempDir::new("save100");
    let net = Net::new();
    // Both ro backends weighted: a weight is on disk at every persist.
    let mut weights = BTreeMap::new();
    weights.insert(net.replica(), 3);
    weights.insert(net.other(), 2);
    let (f, cnf) = fixture_with_cnf(
        &dir,
        FixtureConfig {
            ro_weights: weights,
            ..config(&[net.vip()], &[net.replica(), net.other()])
        },
    );
    std::fs::set_permissions(&cnf, std::fs::Permissions::from_mode(0o600)).unwrap();
    if me() == 0 {
        // Atlas's own user, not the one SAVE CONFIG writes as here (the
        // fixture runs as root): the owner must be put back every time.
        std::os::unix::fs::chown(&cnf, Some(65534), Some(65534)).unwrap();
    }
    let (uid, gid) = owner(&cnf);
    let ro_items = || -> Vec<String> {
        let mut v: Vec<String> = cnf_value(&cnf, "proxy-read-only-backend-addresses")
            .unwrap()
            .split(',')
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    let other = format!("{}@2", net.other());
    let mut both = vec![format!("{}@3", net.replica()), other.clone()];
    both.sort();
    assert_eq!(ro_items(), both);
    let h = AtlasReconciler::spawn(settings(&f, Persist::SaveConfig(cnf.clone())));
    h.set_desired(net.desired(&[net.replica(), net.other()]));
    wait_status(&h, "in sync", |s| s.in_sync).await;
    assert!(
        changes_sent(&f).is_empty(),
        "right at start: no SAVE CONFIG"
    );
    let t0 = Instant::now();
    let mut persists = 0;
    for i in 0..50 {
        h.set_desired(net.desired(&[net.other()]));
        let st = wait_status(&h, "the replica gone", |s| s.in_sync && s.table.len() == 2).await;
        assert_eq!(
            (mode(&cnf), owner(&cnf)),
            (0o600, (uid, gid)),
            "persist {}",
            2 * i + 1
        );
        assert_eq!(
            cnf_value(&cnf, "proxy-read-only-backend-addresses"),
            Some(other.clone())
        );
        h.set_desired(net.desired(&[net.replica(), net.other()]));
        let st2 = wait_status(&h, "the replica back", |s| s.in_sync && s.table.len() == 3).await;
        assert_eq!(
            (mode(&cnf), owner(&cnf)),
            (0o600, (uid, gid)),
            "persist {}",
            2 * i + 2
        );
        // The weight is back (Atlas's SAVE CONFIG had dropped it).
        assert_eq!(ro_items(), both);
        assert!(st.persists < st2.persists);
        persists = st2.persists;
    }
    let saves = changes_sent(&f)
        .iter()
        .filter(|q| *q == "SAVE CONFIG")
        .count();
    println!(
        "{persists} persists ({saves} SAVE CONFIG) in {:?}: mode 0600 and owner {uid}:{gid} after each, weights @3 and @2 kept",
        t0.elapsed()
    );
    assert_eq!((persists, saves), (100, 100));
    drop(h);
    f.stop();
    f.start().unwrap();
    let w: Vec<(SocketAddrV4, u32)> = f.entries().iter().map(|e| (e.address, e.weight)).collect();
    assert!(w.contains(&(net.replica(), 3)), "{w:?}");
}

#[tokio::test]
async fn repairs_are_persisted_within_one_period() {
    let dir = TempDir::new("repair");
    let net = Net::new();
    let (f, cnf) = fixture_with_cnf(&dir, config(&[net.vip()], &[net.replica()]));
    let h = AtlasReconciler::spawn(settings(&f, Persist::SaveConfig(cnf.clone())));
    h.set_desired(net.desired(&[net.replica()]));
    wait_status(&h, "in sync", |s| s.in_sync).await;

    // (a) An operator removes the rw entry and saves: the file lacks it.
    let mut c = login(&f).await;
    c.query("REMOVE BACKEND 1").await.unwrap();
    c.query("SAVE CONFIG").await.unwrap();
    c.quit().await;
    let t0 = Instant::now();
    assert_eq!(
        cnf_value(&cnf, "proxy-backend-addresses").as_deref(),
        Some("")
    );
    // Done when the line is back and the mode too (Atlas's own rewrite
    // has the line at 0644 a moment before the agent restores the mode; and
    // if the agent repaired the table before the operator's SAVE CONFIG,
    // its next round finds the file exposed and puts the mode back).
    let mut on_disk = None;
    while on_disk.is_none() || !h.status().in_sync {
        assert!(t0.elapsed() < WAIT, "{:?}", h.status());
        if on_disk.is_none()
            && cnf_value(&cnf, "proxy-backend-addresses") == Some(net.vip().to_string())
            && mode(&cnf) == 0o600
        {
            on_disk = Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!(
        "rw entry removed and saved by hand: back in the .cnf with mode 0600 {:?} later, in sync (rw serving again) {:?} later (period 200 ms, fixture checker {CHECKER:?})",
        on_disk.unwrap(),
        t0.elapsed()
    );

    // (b) Atlas restarted from a .cnf that lacks the ro entry.
    drop(h);
    let text = std::fs::read_to_string(&cnf).unwrap().replace(
        &format!("proxy-read-only-backend-addresses={}", net.replica()),
        "proxy-read-only-backend-addresses=",
    );
    std::fs::write(&cnf, text).unwrap();
    f.stop();
    f.start().unwrap();
    assert_eq!(f.table().len(), 1);
    let h = AtlasReconciler::spawn(settings(&f, Persist::SaveConfig(cnf.clone())));
    let t1 = Instant::now();
    h.set_desired(net.desired(&[net.replica()]));
    wait_status(&h, "in sync", |s| s.in_sync && s.persists == 1).await;
    println!(
        "Atlas restarted without the ro entry: ADD SLAVE and saved {:?} later",
        t1.elapsed()
    );
    assert_eq!(
        cnf_value(&cnf, "proxy-read-only-backend-addresses"),
        Some(net.replica().to_string())
    );
}

#[tokio::test]
async fn save_config_is_refused_when_the_mode_could_not_be_put_back() {
    // A .cnf name so long that no temporary file can be made beside it: the
    // agent could not restore the mode after SAVE CONFIG, so it must not
    // send it (whoever runs the test, root included).
    let dir = TempDir::new("refuse");
    let net = Net::new();
    let cnf = dir.0.join(format!("{}.cnf", "x".repeat(240)));
    let f = AtlasFixture::new(FixtureConfig {
        cnf_path: Some(cnf.clone()),
        ..config(&[net.vip()], &[net.replica()])
    })
    .unwrap();
    let h = AtlasReconciler::spawn(settings(&f, Persist::SaveConfig(cnf.clone())));
    h.set_desired(net.desired(&[]));
    let st = wait_status(&h, "a refusal", |s| s.consecutive_failures >= 1).await;
    let e = st.last_error.unwrap();
    assert!(
        e.contains("refusing SAVE CONFIG") && e.contains("persist = \"cnf\""),
        "{e}"
    );
    assert!(!st.in_sync);
    assert_eq!(
        changes_sent(&f),
        vec!["REMOVE BACKEND 2".to_string()],
        "no SAVE CONFIG"
    );
    assert_eq!(mode(&cnf), 0o600);
}

#[tokio::test]
async fn a_readable_cnf_is_warned_about_at_start() {
    let dir = TempDir::new("warn");
    let net = Net::new();
    let (f, cnf) = fixture_with_cnf(&dir, config(&[net.vip()], &[]));
    std::fs::set_permissions(&cnf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let h = AtlasReconciler::spawn(settings(&f, Persist::Cnf(cnf.clone())));
    let st = h.status();
    assert_eq!(st.cnf_warnings.len(), 1, "{:?}", st.cnf_warnings);
    assert!(
        st.cnf_warnings[0].contains("readable by group/other (mode 644)"),
        "{:?}",
        st.cnf_warnings
    );
    let h2 = AtlasReconciler::spawn(settings(&f, Persist::SaveConfig(cnf.clone())));
    let w = h2.status().cnf_warnings;
    // The temp directory lets every user in: SAVE CONFIG's window is exposed.
    assert!(
        w.iter()
            .any(|w| w.contains("until the agent restores its mode")),
        "{w:?}"
    );
}

#[tokio::test]
async fn wrong_password_shows_in_status() {
    let net = Net::new();
    let f = fixture(&[net.vip()], &[]);
    let mut s = settings(&f, Persist::None);
    s.password = Password::new("not-it");
    let h = AtlasReconciler::spawn(s);
    h.set_desired(net.desired(&[]));
    let st = wait_status(&h, "two failures", |s| s.consecutive_failures >= 2).await;
    assert!(!st.reachable);
    let err = st.last_error.unwrap();
    assert!(err.contains("password doesn't match"), "{err}");
    assert!(!err.contains("not-it"), "never shows the password: {err}");
}

#[tokio::test]
async fn a_new_wish_mid_round_stops_the_old_plan() {
    let net = Net::new();
    let f = fixture(&[net.vip()], &[]);
    let r2 = net.other();
    let h = AtlasReconciler::spawn(settings(&f, Persist::None));
    // While Atlas handles the first ADD SLAVE, a failover makes both replicas
    // unwanted: the second ADD SLAVE of the old plan must not be sent.
    let (h2, empty) = (h.clone(), net.desired(&[]));
    f.before_next("add slave", move |_| {
        h2.set_desired(empty);
    });
    let mut both = vec![net.replica(), r2];
    both.sort();
    h.set_desired(net.desired(&both));
    wait_status(&h, "in sync with the new wish", |s| {
        s.in_sync && s.desired == Some(net.desired(&[]))
    })
    .await;
    assert_eq!(
        changes_sent(&f),
        vec![format!("ADD SLAVE {}", both[0]), "REMOVE BACKEND 2".into()]
    );
    assert_eq!(
        f.table().iter().map(|b| b.address).collect::<Vec<_>>(),
        vec![net.vip()]
    );
}

// ---- the real agents, MariaDB and the fixture Atlas in the lab --------------

/// The seed's stack with real agents: the replica serves reads through each
/// server's Atlas proxy port once Atlas's checker marks it up, through a
/// failover and the old primary's return; every `.cnf` the agents persisted
/// (SAVE CONFIG) keeps its mode; the agents never report Atlas in sync while
/// it has no `up` rw backend.
#[test]
#[ignore = "privileged: run by cargo xtask test"]
fn lab_reads_follow_the_replica_through_failover_and_return() -> anyhow::Result<()> {
    use anyhow::{ensure, Context};
    use ha_lab::stack::{inside, kill_server1, started, StackOptions, STEP};
    use ha_lab::{wait_until, wait_until_ok, Server};
    const S1: Server = Server::S1;
    const S2: Server = Server::S2;

    let mut st = started(StackOptions::default())?;
    let checker = st.atlas_checker();
    let bound = STEP + checker;
    let cnfs: Vec<PathBuf> = Server::ALL
        .iter()
        .map(|&s| st.atlas(s).get().cnf_path().unwrap().to_path_buf())
        .collect();
    let cnf = |s: Server| cnfs[usize::from(s.index() - 1)].clone();
    for s in Server::ALL {
        // The agents added backends and saved: Atlas made the file 0644, the
        // agent put the fixture's 0600 back.
        ensure!(mode(&cnf(s)) == 0o600, "{s}'s .cnf is {:o}", mode(&cnf(s)));
    }
    // Reads through server1's Atlas (server1 MASTER, server2 its replica).
    let served = wait_until_ok(bound, "server1's Atlas: reads served by server2", || {
        Ok(st.atlas(S1).read_server_id()? == Some(2))
    })
    .with_context(|| format!("{}\n{}", st.atlas(S1).describe(), st.logs()))?;
    println!(
        "server1's Atlas: reads served by the replica (server2) {served:?} after the stack was up"
    );

    // Failover: server2's Atlas drops its own ro entry; reads go to the rw
    // backend (the VIP, now server2) at once.
    let fault = kill_server1(&mut st)?;
    wait_until(STEP, "server2's Atlas rw only", || {
        st.atlas(S2).lists() == (vec![ha_lab::stack::vip()], vec![])
    })
    .with_context(|| st.logs())?;
    wait_until_ok(
        bound,
        "reads through server2's Atlas answered by server2",
        || Ok(st.atlas(S2).read_server_id()? == Some(2)),
    )
    .with_context(|| format!("{}\n{}", st.atlas(S2).describe(), st.logs()))?;
    println!(
        "failover: reads through server2's Atlas answered again {:?} after the fault",
        fault.elapsed()
    );

    // The old primary returns and catches up; then it serves reads again.
    st.lab.links_up(S1)?;
    st.start_agent(S1)?;
    st.wait_state(S1, "BACKUP")?;
    st.dbs[0].spawn()?;
    let listed = st.wait_atlas(S2, &[inside(S1)], ha_lab::stack::SETTLE)?;
    let mut samples = 0;
    let mut in_sync_without_up_rw = 0;
    let served = wait_until_ok(
        bound,
        "reads through server2's Atlas served by server1",
        || {
            samples += 1;
            if st.lab.agent_status(S2)?["atlas"]["in_sync"] == true && !st.atlas(S2).rw_up() {
                in_sync_without_up_rw += 1;
            }
            Ok(st.atlas(S2).read_server_id()? == Some(1))
        },
    )
    .with_context(|| format!("{}\n{}", st.atlas(S2).describe(), st.logs()))?;
    // The agent reads the table every 100 ms while a backend is unknown:
    // its status follows within that (and the status command's own time).
    let serving_entry = || -> anyhow::Result<serde_json::Value> {
        st.lab.agent_status(S2)?["atlas"]["serving"]
            .as_array()
            .and_then(|v| {
                v.iter()
                    .find(|e| e["address"] == inside(S1).to_string())
                    .cloned()
            })
            .context("server1 in server2's serving list")
    };
    wait_until_ok(STEP, "server2's agent: server1 serving", || {
        Ok(serving_entry()?["serving"] == true)
    })
    .with_context(|| st.logs())?;
    let entry = serving_entry()?;
    println!(
        "return: server1 listed ro {:?} after its mysqld started, reads served by it {:?} after that (fixture checker {checker:?}); server2's agent measured listed -> up {} ms; {samples} samples, {in_sync_without_up_rw} in sync without an up rw",
        listed,
        served,
        entry["time_to_serving_ms"]
    );
    ensure!(
        in_sync_without_up_rw == 0,
        "the agent said in sync while Atlas had no up rw backend"
    );
    ensure!(entry["time_to_serving_ms"].is_number(), "{entry}");
    for s in Server::ALL {
        ensure!(mode(&cnf(s)) == 0o600, "{s}'s .cnf is {:o}", mode(&cnf(s)));
        let persists = st.lab.agent_status(s)?["atlas"]["persists"].clone();
        println!("{s}: {persists} persists, .cnf mode 0600");
    }
    Ok(())
}
