//! One connection to a server, with every statement bounded in time,
//! timed, and logged without secrets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, Value};
use tracing::debug;

use super::credentials::Secret;
use super::error::MysqlError;
use super::flavor::{ServerKind, Sql};
use super::replica::Columns;
use super::report::Step;

/// Where and as whom to connect.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub address: SocketAddr,
    pub user: String,
    pub password: Secret,
}

/// What a connection learned about its server when it was opened.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub kind: ServerKind,
    pub version_text: String,
    pub server_id: u32,
}

pub(crate) struct Session {
    conn: Conn,
    pub ident: Identity,
    pub server: String,
    timeout: Duration,
    pub steps: Vec<Step>,
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(d) => Some(d.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn columns(row: Row) -> Columns {
    let names: Vec<String> = row
        .columns_ref()
        .iter()
        .map(|c| c.name_str().into_owned())
        .collect();
    names
        .into_iter()
        .zip(row.unwrap().into_iter().map(text))
        .collect()
}

fn statement_error(server: &str, step: &str, e: mysql_async::Error) -> MysqlError {
    let (code, message) = match e {
        mysql_async::Error::Server(s) => (Some(s.code), s.message),
        other => (None, other.to_string()),
    };
    MysqlError::Statement {
        server: server.to_string(),
        step: step.to_string(),
        code,
        message,
    }
}

impl Session {
    /// Connects (TCP only, bounded by `timeout`) and identifies the server.
    pub async fn open(ep: &Endpoint, timeout: Duration) -> Result<Session, MysqlError> {
        let server = ep.address.to_string();
        // The server also bounds lock waits (SET GLOBAL read_only waits for
        // running commits), so a statement cannot outlive us by much.
        let lock_wait = timeout.as_secs().max(1);
        let opts = OptsBuilder::default()
            .ip_or_hostname(ep.address.ip().to_string())
            .resolved_ips(Some(vec![ep.address.ip()]))
            .tcp_port(ep.address.port())
            .user(Some(ep.user.clone()))
            .pass(Some(ep.password.expose().to_string()))
            .prefer_socket(false)
            .tcp_nodelay(true)
            .stmt_cache_size(0)
            // Given here, the driver does not ask the server for them: one
            // round trip less per connect.
            .max_allowed_packet(Some(16 << 20))
            .wait_timeout(Some(28_800))
            .init(vec![format!("SET SESSION lock_wait_timeout = {lock_wait}")]);
        let connect_err = |message: String| MysqlError::Connect {
            server: server.clone(),
            user: ep.user.clone(),
            message,
        };
        let conn = match tokio::time::timeout(timeout, Conn::new(opts)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(connect_err(e.to_string())),
            Err(_) => return Err(connect_err(format!("no answer within {timeout:?}"))),
        };
        let mut s = Session {
            conn,
            ident: Identity {
                kind: ServerKind {
                    flavor: super::flavor::Flavor::Mysql,
                    version: super::flavor::Version::new(0, 0, 0),
                },
                version_text: String::new(),
                server_id: 0,
            },
            server,
            timeout,
            steps: Vec::new(),
        };
        let row = s
            .row("identify server", &ServerKind::identity_query())
            .await?
            .unwrap_or_default();
        let get = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let (version_text, comment) = (get(0), get(1));
        let kind =
            ServerKind::detect(&version_text, &comment).map_err(|source| MysqlError::Flavor {
                server: s.server.clone(),
                source,
            })?;
        s.ident = Identity {
            kind,
            server_id: get(2).parse().unwrap_or(0),
            version_text,
        };
        Ok(s)
    }

    /// Reuses a cached connection if it still answers a ping.
    pub async fn resume(
        mut conn: Conn,
        ident: Identity,
        server: String,
        timeout: Duration,
    ) -> Option<Session> {
        match tokio::time::timeout(timeout, conn.ping()).await {
            Ok(Ok(())) => Some(Session {
                conn,
                ident,
                server,
                timeout,
                steps: Vec::new(),
            }),
            _ => None,
        }
    }

    pub fn into_parts(self) -> (Conn, Identity) {
        (self.conn, self.ident)
    }

    pub fn kind(&self) -> ServerKind {
        self.ident.kind
    }

    fn record(&mut self, step: &str, sql: &Sql, took: Duration) {
        debug!(server = %self.server, step, sql = %sql, took_ms = super::ms(took), "mysql statement");
        self.steps.push(Step {
            name: step.to_string(),
            took,
        });
    }

    /// Runs a query with an explicit time bound; returns its rows by column name.
    pub async fn rows_within(
        &mut self,
        step: &str,
        sql: &Sql,
        limit: Duration,
    ) -> Result<Vec<Columns>, MysqlError> {
        let start = Instant::now();
        let result = tokio::time::timeout(limit, self.conn.query::<Row, _>(sql.text())).await;
        let took = start.elapsed();
        self.record(step, sql, took);
        match result {
            Ok(Ok(rows)) => Ok(rows.into_iter().map(columns).collect()),
            Ok(Err(e)) => Err(statement_error(&self.server, step, e)),
            Err(_) => Err(MysqlError::Timeout {
                server: self.server.clone(),
                step: step.to_string(),
                timeout: limit,
            }),
        }
    }

    pub async fn rows(&mut self, step: &str, sql: &Sql) -> Result<Vec<Columns>, MysqlError> {
        self.rows_within(step, sql, self.timeout).await
    }

    /// The first row's values in column order (None: no row).
    pub async fn row(
        &mut self,
        step: &str,
        sql: &Sql,
    ) -> Result<Option<Vec<Option<String>>>, MysqlError> {
        self.row_within(step, sql, self.timeout).await
    }

    pub async fn row_within(
        &mut self,
        step: &str,
        sql: &Sql,
        limit: Duration,
    ) -> Result<Option<Vec<Option<String>>>, MysqlError> {
        let start = Instant::now();
        let result = tokio::time::timeout(limit, self.conn.query_first::<Row, _>(sql.text())).await;
        let took = start.elapsed();
        self.record(step, sql, took);
        match result {
            Ok(Ok(row)) => Ok(row.map(|r| r.unwrap().into_iter().map(text).collect())),
            Ok(Err(e)) => Err(statement_error(&self.server, step, e)),
            Err(_) => Err(MysqlError::Timeout {
                server: self.server.clone(),
                step: step.to_string(),
                timeout: limit,
            }),
        }
    }

    /// Runs statements that return no rows.
    pub async fn exec(&mut self, step: &str, sqls: &[Sql]) -> Result<(), MysqlError> {
        for sql in sqls {
            let start = Instant::now();
            let result = tokio::time::timeout(self.timeout, self.conn.query_drop(sql.text())).await;
            let took = start.elapsed();
            self.record(step, sql, took);
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(statement_error(&self.server, step, e)),
                Err(_) => {
                    return Err(MysqlError::Timeout {
                        server: self.server.clone(),
                        step: step.to_string(),
                        timeout: self.timeout,
                    })
                }
            }
        }
        Ok(())
    }

    /// `SHOW GLOBAL STATUS`-style rows as a name -> value map.
    pub async fn variables(
        &mut self,
        step: &str,
        sql: &Sql,
    ) -> Result<BTreeMap<String, String>, MysqlError> {
        let rows = self.rows(step, sql).await?;
        Ok(rows
            .into_iter()
            .filter_map(|mut r| {
                let name = r.remove("Variable_name").flatten()?;
                let value = r.remove("Value").flatten().unwrap_or_default();
                Some((name, value))
            })
            .collect())
    }
}
