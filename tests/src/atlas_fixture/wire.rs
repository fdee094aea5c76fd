//! The MySQL protocol pieces the fixture needs on both sides: framing,
//! greetings, the native-password scramble, result sets, and a minimal
//! client login (the proxy and the checker log in to backends with it).
//!
//! Written independently of the agent's client so that the two check each
//! other.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

use sha1::{Digest, Sha1};

pub const CLIENT_LONG_PASSWORD: u32 = 0x0000_0001;
pub const CLIENT_FOUND_ROWS: u32 = 0x0000_0002;
pub const CLIENT_LONG_FLAG: u32 = 0x0000_0004;
pub const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
pub const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
pub const CLIENT_TRANSACTIONS: u32 = 0x0000_2000;
pub const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
pub const COM_QUIT: u8 = 0x01;
pub const COM_INIT_DB: u8 = 0x02;
pub const COM_QUERY: u8 = 0x03;
pub const COM_FIELD_LIST: u8 = 0x04;
pub const COM_STATISTICS: u8 = 0x09;
pub const COM_PING: u8 = 0x0e;
pub const MYSQL_TYPE_LONG: u8 = 3;
pub const MYSQL_TYPE_STRING: u8 = 254;
pub const SERVER_STATUS_AUTOCOMMIT: u16 = 2;
/// Bound on a packet the fixture accepts (its peers are tests and MariaDB).
const MAX_PACKET: usize = 16 << 20;

/// `SHA1(password) XOR SHA1(challenge + SHA1(SHA1(password)))`.
pub fn scramble(password: &[u8], challenge: &[u8]) -> Vec<u8> {
    let h1 = Sha1::digest(password);
    let h2 = Sha1::digest(h1);
    let mut m = Sha1::new();
    m.update(challenge);
    m.update(h2);
    let h3 = m.finalize();
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

/// 20 printable characters (33..=126), as mysql-proxy makes a challenge.
pub fn challenge() -> io::Result<Vec<u8>> {
    let mut raw = [0u8; 20];
    getrandom::fill(&mut raw).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(raw.iter().map(|b| 33 + b % 94).collect())
}

pub fn read_packet(mut s: &TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    if len > MAX_PACKET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {len}-byte packet"),
        ));
    }
    let mut p = vec![0u8; len];
    s.read_exact(&mut p)?;
    Ok((h[3], p))
}

pub fn frame(out: &mut Vec<u8>, seq: &mut u8, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes()[..3]);
    out.push(*seq);
    out.extend_from_slice(payload);
    *seq = seq.wrapping_add(1);
}

pub fn write_packet(mut s: &TcpStream, seq: u8, payload: &[u8]) -> io::Result<()> {
    let mut out = vec![];
    frame(&mut out, &mut { seq }, payload);
    s.write_all(&out)
}

pub fn lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    match s.len() {
        n if n < 251 => out.push(n as u8),
        n if n < 1 << 16 => {
            out.push(0xFC);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        n => {
            out.push(0xFD);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
    }
    out.extend_from_slice(s);
}

pub fn eof_packet() -> Vec<u8> {
    let mut p = vec![0xFE, 0, 0];
    p.extend_from_slice(&SERVER_STATUS_AUTOCOMMIT.to_le_bytes());
    p
}

pub fn ok_packet() -> Vec<u8> {
    let mut p = vec![0x00, 0, 0];
    p.extend_from_slice(&SERVER_STATUS_AUTOCOMMIT.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    p
}

/// An ERR packet with a SQLSTATE marker.
pub fn err_packet(code: u16, state: &str, message: &str) -> Vec<u8> {
    let mut p = vec![0xFF];
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    p.extend_from_slice(state.as_bytes());
    p.extend_from_slice(message.as_bytes());
    p
}

/// What a server sends back to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Err {
        code: u16,
        state: &'static str,
        message: String,
    },
    Rows {
        columns: Vec<(&'static str, u8)>,
        rows: Vec<Vec<String>>,
    },
}

pub fn write_reply(mut s: &TcpStream, mut seq: u8, reply: &Reply) -> io::Result<()> {
    let mut out = vec![];
    match reply {
        Reply::Ok => frame(&mut out, &mut seq, &ok_packet()),
        Reply::Err {
            code,
            state,
            message,
        } => frame(&mut out, &mut seq, &err_packet(*code, state, message)),
        Reply::Rows { columns, rows } => {
            frame(&mut out, &mut seq, &[columns.len() as u8]);
            for (name, ty) in columns {
                let mut p = vec![];
                lenenc_str(&mut p, b"def");
                for _ in 0..3 {
                    lenenc_str(&mut p, b""); // schema, table, org_table
                }
                lenenc_str(&mut p, name.as_bytes());
                lenenc_str(&mut p, name.as_bytes());
                p.push(0x0c);
                p.extend_from_slice(&8u16.to_le_bytes());
                p.extend_from_slice(&32u32.to_le_bytes());
                p.push(*ty);
                p.extend_from_slice(&[0, 0, 0, 0, 0]); // flags, decimals, filler
                frame(&mut out, &mut seq, &p);
            }
            frame(&mut out, &mut seq, &eof_packet());
            for row in rows {
                let mut p = vec![];
                for v in row {
                    lenenc_str(&mut p, v.as_bytes());
                }
                frame(&mut out, &mut seq, &p);
            }
            frame(&mut out, &mut seq, &eof_packet());
        }
    }
    s.write_all(&out)
}

/// A protocol-10 greeting.
pub fn greeting(version: &str, thread_id: u32, capabilities: u32, challenge: &[u8]) -> Vec<u8> {
    let mut p = vec![10];
    p.extend_from_slice(version.as_bytes());
    p.push(0);
    p.extend_from_slice(&thread_id.to_le_bytes());
    p.extend_from_slice(&challenge[..8]);
    p.push(0);
    p.extend_from_slice(&(capabilities as u16).to_le_bytes());
    p.push(8); // latin1
    p.extend_from_slice(&SERVER_STATUS_AUTOCOMMIT.to_le_bytes());
    p.extend_from_slice(&((capabilities >> 16) as u16).to_le_bytes());
    // Auth data length and the reserved bytes: zero, as mysql-proxy writes them.
    p.extend_from_slice(&[0u8; 11]);
    p.extend_from_slice(&challenge[8..]);
    p.push(0);
    p
}

/// A client's handshake response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub capabilities: u32,
    pub user: String,
    pub response: Vec<u8>,
    pub db: Option<String>,
}

pub fn parse_auth(p: &[u8]) -> Option<Auth> {
    let capabilities = u32::from_le_bytes(p.get(..4)?.try_into().ok()?);
    if capabilities & CLIENT_PROTOCOL_41 == 0 {
        // A 4.0 client: its response is shaped otherwise; only the flag matters.
        return Some(Auth {
            capabilities,
            user: String::new(),
            response: vec![],
            db: None,
        });
    }
    let rest = p.get(32..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let user = String::from_utf8_lossy(&rest[..nul]).into_owned();
    let mut rest = &rest[nul + 1..];
    let response = if capabilities & CLIENT_SECURE_CONNECTION != 0 {
        let len = *rest.first()? as usize;
        let r = rest.get(1..1 + len)?.to_vec();
        rest = &rest[1 + len..];
        r
    } else {
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let r = rest[..end].to_vec();
        rest = rest.get(end + 1..).unwrap_or(&[]);
        r
    };
    let db = (capabilities & CLIENT_CONNECT_WITH_DB != 0)
        .then(|| {
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        })
        .filter(|d| !d.is_empty());
    Some(Auth {
        capabilities,
        user,
        response,
        db,
    })
}

/// A server's side of the handshake up to the client's response: sends a
/// greeting with a fresh challenge, reads the response. Returns the
/// challenge, the response's packet number and the parsed response (None:
/// malformed).
pub fn greet(
    s: &TcpStream,
    version: &str,
    thread_id: u32,
    capabilities: u32,
) -> io::Result<(Vec<u8>, u8, Option<Auth>)> {
    let _ = s.set_nodelay(true);
    let challenge = challenge()?;
    write_packet(
        s,
        0,
        &greeting(version, thread_id, capabilities, &challenge),
    )?;
    let (seq, p) = read_packet(s)?;
    Ok((challenge, seq, parse_auth(&p)))
}

/// The 20-byte challenge of a server's greeting.
pub fn greeting_challenge(g: &[u8]) -> Option<Vec<u8>> {
    if g.first() != Some(&10) {
        return None;
    }
    let nul = g.iter().position(|&b| b == 0)?;
    let rest = g.get(nul + 1..)?;
    let mut c = rest.get(4..12)?.to_vec();
    c.extend_from_slice(rest.get(31..43)?);
    Some(c)
}

/// How a client login to a backend ended.
#[derive(Debug)]
pub enum Login {
    Ok(TcpStream),
    /// The server answered the login with this ERR packet.
    Refused(Vec<u8>),
}

/// Connects to a MySQL server within `timeout` and logs in (protocol 4.1,
/// native password, no plugin auth), optionally into `db`.
pub fn client_login(
    addr: SocketAddrV4,
    user: &str,
    password: &str,
    db: Option<&str>,
    timeout: Duration,
) -> io::Result<Login> {
    let s = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let _ = s.set_nodelay(true);
    let (_, g) = read_packet(&s)?;
    if g.first() == Some(&0xFF) {
        return Ok(Login::Refused(g));
    }
    let challenge = greeting_challenge(&g)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a MySQL greeting"))?;
    let mut caps = CLIENT_LONG_PASSWORD
        | CLIENT_LONG_FLAG
        | CLIENT_PROTOCOL_41
        | CLIENT_TRANSACTIONS
        | CLIENT_SECURE_CONNECTION;
    if db.is_some() {
        caps |= CLIENT_CONNECT_WITH_DB;
    }
    let mut p = caps.to_le_bytes().to_vec();
    p.extend_from_slice(&(16u32 << 20).to_le_bytes());
    p.push(33); // utf8
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    let auth = if password.is_empty() {
        vec![]
    } else {
        scramble(password.as_bytes(), &challenge)
    };
    p.push(auth.len() as u8);
    p.extend_from_slice(&auth);
    if let Some(db) = db {
        p.extend_from_slice(db.as_bytes());
        p.push(0);
    }
    write_packet(&s, 1, &p)?;
    let (_, r) = read_packet(&s)?;
    match r.first() {
        Some(0x00) => {
            // Leave the read timeout to the caller.
            s.set_read_timeout(None)?;
            s.set_write_timeout(None)?;
            Ok(Login::Ok(s))
        }
        Some(0xFF) => Ok(Login::Refused(r)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the login was answered with neither OK nor ERR (an authentication switch?)",
        )),
    }
}

/// True for the packet that ends a result set's rows (or its columns).
pub fn is_eof(p: &[u8]) -> bool {
    p.first() == Some(&0xFE) && p.len() < 9
}

/// Sends one command on a logged-in connection and reads its whole reply,
/// packet by packet, as it comes (the proxy relays them unchanged).
pub fn command(s: &TcpStream, payload: &[u8]) -> io::Result<Vec<(u8, Vec<u8>)>> {
    write_packet(s, 0, payload)?;
    let mut out = Vec::new();
    let first = read_packet(s)?;
    let kind = first.1.first().copied();
    out.push(first);
    match kind {
        Some(0x00) | Some(0xFF) => return Ok(out),
        Some(0xFB) | None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "LOCAL INFILE or an empty reply",
            ))
        }
        _ => {}
    }
    // Column definitions up to an EOF, then rows up to an EOF or ERR.
    loop {
        let p = read_packet(s)?;
        let end = is_eof(&p.1);
        out.push(p);
        if end {
            break;
        }
    }
    loop {
        let p = read_packet(s)?;
        let end = is_eof(&p.1) || p.1.first() == Some(&0xFF);
        out.push(p);
        if end {
            return Ok(out);
        }
    }
}

/// The first value of the first row of a reply read by [`command`].
pub fn first_value(reply: &[(u8, Vec<u8>)]) -> Option<String> {
    let n = *reply.first()?.1.first()? as usize;
    let row = &reply.get(n + 2)?.1;
    if is_eof(row) || row.first() == Some(&0xFF) {
        return None;
    }
    let len = *row.first()? as usize;
    if len >= 251 {
        return None;
    }
    Some(String::from_utf8_lossy(row.get(1..1 + len)?).into_owned())
}
