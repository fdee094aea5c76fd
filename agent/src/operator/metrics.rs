//! `[metrics]`: Prometheus metrics over HTTP (`GET /metrics`).
//!
//! Nothing is counted here: at each scrape the agent's [`Status`] is asked
//! for (the same snapshot `ha-agent status` shows) and turned into metrics,
//! written in the Prometheus text format by the `prometheus` crate. So the
//! daemon needs one hook, [`spawn`], and a metric is exactly what the status
//! says at that moment.
//!
//! Why `prometheus` and not `prometheus-client`: the latter writes
//! OpenMetrics, whose counters (`# TYPE x counter` then `x_total`) the
//! Prometheus text parser behind `promtool check metrics` (Debian 12's
//! 2.42) reports as having no help text; the classic text format passes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::proto::{self, MetricFamily};
use prometheus::{CounterVec, Encoder, GaugeVec, Opts, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::decisions::election::Role;
use crate::operator::status::{HistogramStatus, Reply, Status};

/// The agent's request channel (as the status socket uses it).
pub type Commands = mpsc::Sender<(
    crate::operator::status::server::Request,
    oneshot::Sender<Reply>,
)>;

/// How long a scrape waits for the agent's snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// The Prometheus text format (version 0.0.4).
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {listen} (metrics.listen): {source}; is another process using the port?")]
    Bind {
        listen: SocketAddr,
        source: std::io::Error,
    },
}

/// Listens on `listen` (failing now if it cannot) and serves the metrics
/// in the background, asking `commands` for a status at each scrape.
pub async fn spawn(listen: SocketAddr, commands: Commands) -> Result<(), MetricsError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| MetricsError::Bind { listen, source })?;
    tracing::info!(%listen, "serving Prometheus metrics on /metrics");
    tokio::spawn(serve(listener, commands));
    Ok(())
}

/// Scrapes served at once; more connections wait (Prometheus scrapes one
/// at a time per target).
const MAX_SCRAPES: usize = 4;
/// A client that has not sent its request head by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts scrapers until the runtime stops.
pub async fn serve(listener: TcpListener, commands: Commands) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let commands = commands.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let commands = commands.clone();
                async move { Ok::<_, Infallible>(answer(req, &commands).await) }
            });
            // A scraper that hangs up early is not worth a log line.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer<B>(req: Request<B>, commands: &Commands) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, kind: &str, body: String| {
        Response::builder()
            .status(code)
            .header(hyper::header::CONTENT_TYPE, kind)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    let text = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            text,
            "only GET /metrics\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => match snapshot(commands).await {
            Some(status) => reply(StatusCode::OK, CONTENT_TYPE, render(&status)),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                text,
                "the agent did not answer with its status in time\n".into(),
            ),
        },
        "/" => reply(
            StatusCode::OK,
            text,
            "ha-agent: metrics at /metrics\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            text,
            "not found: use /metrics\n".into(),
        ),
    }
}

async fn snapshot(commands: &Commands) -> Option<Status> {
    let (tx, rx) = oneshot::channel();
    let ask = async {
        commands
            .send((crate::operator::status::server::Request::Status, tx))
            .await
            .ok()?;
        match rx.await.ok()? {
            Reply::Status(s) => Some(*s),
            _ => None,
        }
    };
    tokio::time::timeout(SNAPSHOT_TIMEOUT, ask).await.ok()?
}

type Labels = Vec<(&'static str, String)>;

const PREFIX: &str = "ha_agent_";

/// Metric families made from samples; families without samples are left out.
#[derive(Default)]
struct Metrics {
    families: Vec<MetricFamily>,
}

impl Metrics {
    /// Label names of a family: those of its first sample (all share them).
    fn names(samples: &[(Labels, impl Sized)]) -> Vec<&'static str> {
        samples
            .first()
            .map(|(l, _)| l.iter().map(|(k, _)| *k).collect())
            .unwrap_or_default()
    }

    /// One family of `vec`'s type, `set` putting each sample's value in.
    fn family<B: MetricVecBuilder>(
        &mut self,
        make: fn(Opts, &[&str]) -> prometheus::Result<MetricVec<B>>,
        name: String,
        help: &str,
        samples: Vec<(Labels, f64)>,
        set: fn(&B::M, f64),
    ) {
        if samples.is_empty() {
            return;
        }
        let Ok(vec) = make(Opts::new(name, help), &Self::names(&samples)) else {
            return;
        };
        for (labels, v) in &samples {
            let values: Vec<&str> = labels.iter().map(|(_, v)| v.as_str()).collect();
            if let Ok(m) = vec.get_metric_with_label_values(&values) {
                set(&m, *v);
            }
        }
        self.families.extend(vec.collect());
    }

    fn gauge(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, f64)>) {
        let samples = samples.into_iter().collect();
        self.family(
            GaugeVec::new,
            format!("{PREFIX}{name}"),
            help,
            samples,
            |g, v| g.set(v),
        );
    }

    /// `name` without `_total`: added here, as Prometheus names counters.
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let samples = samples.into_iter().map(|(l, v)| (l, v as f64)).collect();
        self.family(
            CounterVec::new,
            format!("{PREFIX}{name}_total"),
            help,
            samples,
            |c, v| c.inc_by(v),
        );
    }

    fn one(&mut self, name: &str, help: &str, v: f64) {
        self.gauge(name, help, [(Vec::new(), v)]);
    }

    /// A histogram counted elsewhere (the sender's), in `per_unit`ths of
    /// the unit (1e6: microseconds); left out if its counts do not match
    /// its bounds.
    fn counted_histogram(&mut self, name: &str, help: &str, h: &HistogramStatus, per_unit: f64) {
        if h.counts.len() != h.bounds_us.len() + 1 || h.bounds_us.windows(2).any(|w| w[0] >= w[1]) {
            return;
        }
        let mut cumulative = 0u64;
        let buckets = h
            .bounds_us
            .iter()
            .zip(&h.counts)
            .map(|(bound, n)| {
                cumulative = cumulative.saturating_add(*n);
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound as f64 / per_unit);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut hist = proto::Histogram::default();
        hist.set_sample_count(h.counts.iter().fold(0u64, |a, n| a.saturating_add(*n)));
        hist.set_sample_sum(h.sum_us as f64 / per_unit);
        hist.set_bucket(buckets);
        let mut metric = proto::Metric::default();
        metric.set_histogram(hist);
        let mut family = MetricFamily::default();
        family.set_name(format!("{PREFIX}{name}"));
        family.set_help(help.to_string());
        family.set_field_type(proto::MetricType::HISTOGRAM);
        family.set_metric(vec![metric]);
        self.families.push(family);
    }
}

fn b(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

const ROLES: [Role; 4] = [Role::Init, Role::Backup, Role::Master, Role::Fault];
const DB_ROLES: [&str; 5] = ["primary", "replica", "fenced", "down", "unknown"];

/// The metrics of one status, in the OpenMetrics text format.
pub fn render(s: &Status) -> String {
    let mut m = Metrics::default();
    m.gauge(
        "build_info",
        "The agent's version and node name (always 1)",
        [(
            vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("node", s.node.clone()),
            ],
            1.0,
        )],
    );
    m.gauge(
        "role",
        "1 for the node's current role (INIT, BACKUP, MASTER, FAULT), 0 for the others",
        ROLES.iter().map(|r| {
            (
                vec![("role", r.as_str().to_string())],
                b(r.as_str() == s.state),
            )
        }),
    );
    m.one(
        "epoch",
        "Election epoch: incremented by every takeover",
        s.epoch as f64,
    );
    m.one("priority", "Election priority", f64::from(s.priority));
    m.one(
        "degraded",
        "1 while the peer is silent on some links but heard on another",
        b(s.degraded),
    );
    m.one(
        "isolated",
        "1 while the holder hears neither peer nor witness and counts down to dropping the VIPs",
        b(s.fencing_in_ms.is_some()),
    );
    m.one(
        "warnings",
        "Warnings shown by `ha-agent status`",
        s.warnings.len() as f64,
    );
    if let Some(p) = &s.peer {
        m.one(
            "peer_alive",
            "1 while the peer is heard on at least one link",
            b(p.alive),
        );
        m.one("peer_epoch", "The peer's advertised epoch", p.epoch as f64);
        m.gauge(
            "peer_role",
            "1 for the peer's advertised role",
            ROLES.iter().map(|r| {
                (
                    vec![("role", r.as_str().to_string())],
                    b(r.as_str() == p.state),
                )
            }),
        );
    }
    m.one(
        "vips_held",
        "VIPs this node holds",
        s.vips_held.len() as f64,
    );
    m.gauge(
        "vip_held",
        "1 if this node holds the VIP",
        s.vips.iter().map(|v| {
            (
                vec![
                    ("address", v.address.clone()),
                    ("interface", v.interface.clone()),
                ],
                b(v.held),
            )
        }),
    );
    links(&mut m, s);
    if let Some(sender) = &s.sender {
        m.counter(
            "sender_slots",
            "Probe slots sent (the first copy of each, all links)",
            [(Vec::new(), sender.slots)],
        );
        m.counter(
            "sender_missed_slots",
            "Probe slots no sender thread could send in time",
            [(Vec::new(), sender.missed_slots)],
        );
        m.counter(
            "sender_send_failures",
            "Probe sends that failed (no route or carrier, full buffer)",
            [(Vec::new(), sender.send_errors)],
        );
        m.counter(
            "sender_witness_requests",
            "Witness ARP requests sent, by destination (the witness's MAC, or broadcast when it had not answered the request before)",
            [
                (
                    vec![("to", "unicast".to_string())],
                    sender.witness_requests.saturating_sub(sender.witness_broadcasts),
                ),
                (
                    vec![("to", "broadcast".to_string())],
                    sender.witness_broadcasts,
                ),
            ],
        );
        m.gauge(
            "sender_threads",
            "Probe sender threads, and how many run under SCHED_FIFO",
            [
                (vec![("kind", "all".to_string())], sender.threads as f64),
                (
                    vec![("kind", "realtime".to_string())],
                    sender.realtime_threads as f64,
                ),
            ],
        );
        m.counted_histogram(
            "sender_lateness_seconds",
            "How late the first copy of each probe slot left (the best sender thread)",
            &sender.lateness,
            1e6,
        );
    }
    m.counter(
        "false_alarms",
        "Takeovers handed back inside the reclaim window: the holder had only stalled",
        [(Vec::new(), s.false_alarms)],
    );
    m.counter(
        "transitions",
        "Role changes since start, by from, to and reason",
        s.transition_counts.iter().map(|t| {
            (
                vec![
                    ("from", t.from.clone()),
                    ("to", t.to.clone()),
                    ("reason", t.reason.clone()),
                ],
                t.count,
            )
        }),
    );
    m.counter(
        "hook_runs",
        "Hook commands run since start, by state",
        s.hook_totals
            .iter()
            .map(|h| (vec![("state", h.state.clone())], h.runs)),
    );
    m.counter(
        "hook_failures",
        "Hook commands that failed (non-zero exit, timeout, not started), by state",
        s.hook_totals
            .iter()
            .map(|h| (vec![("state", h.state.clone())], h.failures)),
    );
    database(&mut m, s);
    atlas(&mut m, s);
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.families, &mut out) {
        tracing::warn!(error = %e, "cannot encode the metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

fn links(m: &mut Metrics, s: &Status) {
    let l = |name: &str, iface: &str| {
        vec![("link", name.to_string()), ("interface", iface.to_string())]
    };
    m.gauge(
        "link_peer_up",
        "1 while the peer's probes arrive on this link",
        s.links
            .iter()
            .map(|k| (l(&k.name, &k.interface), b(k.peer_up))),
    );
    m.gauge(
        "link_peer_last_seen_seconds",
        "Time since the last accepted probe from the peer on this link",
        s.links.iter().filter_map(|k| {
            k.last_seen_ms_ago
                .map(|ms| (l(&k.name, &k.interface), ms as f64 / 1000.0))
        }),
    );
    m.counter(
        "link_probes_received",
        "Probes from the peer accepted by the kernel on this link",
        s.links
            .iter()
            .map(|k| (l(&k.name, &k.interface), k.probes_received)),
    );
    m.counter(
        "link_probes_lost",
        "Probes from the peer missed on this link (gaps in the sequence)",
        s.links
            .iter()
            .map(|k| (l(&k.name, &k.interface), k.probes_lost)),
    );
    m.counter(
        "link_probes_rejected",
        "Frames to the probe port dropped by the kernel: not the peer's valid probes (source, sender, link, tag, old session)",
        s.links
            .iter()
            .map(|k| (l(&k.name, &k.interface), k.probes_rejected)),
    );
    m.counter(
        "link_probes_duplicate",
        "Copies of probe slots already counted (the redundant senders' second copies, replays)",
        s.links
            .iter()
            .map(|k| (l(&k.name, &k.interface), k.probes_duplicate)),
    );
    m.gauge(
        "link_carrier",
        "1 while the link's interface has carrier",
        s.links
            .iter()
            .map(|k| (l(&k.name, &k.interface), b(k.carrier))),
    );
    m.counter(
        "link_lease_drops",
        "Frames to our VIPs the kernel dropped while our lease had lapsed (the agent hung)",
        s.links
            .iter()
            .map(|k| (l(&k.name, &k.interface), k.lease_drops)),
    );
    m.counter(
        "link_send_errors",
        "Our probes that failed to leave on this link",
        s.links
            .iter()
            .map(|k| (l(&k.name, &k.interface), k.send_errors)),
    );
    let w = |k: &crate::operator::status::LinkStatus| {
        let mut labels = l(&k.name, &k.interface);
        labels.push(("witness", k.witness.clone().unwrap_or_default()));
        labels
    };
    m.gauge(
        "link_witness_up",
        "1 while the link's witness (the gateway) answers ARP",
        s.links
            .iter()
            .filter(|k| k.witness.is_some())
            .map(|k| (w(k), b(k.witness_up == Some(true)))),
    );
    m.gauge(
        "link_witness_last_seen_seconds",
        "Time since the witness last answered",
        s.links
            .iter()
            .filter(|k| k.witness.is_some())
            .filter_map(|k| {
                k.witness_last_seen_ms_ago
                    .map(|ms| (w(k), ms as f64 / 1000.0))
            }),
    );
}

fn database(m: &mut Metrics, s: &Status) {
    let Some(d) = &s.database else { return };
    m.one("database_up", "1 while the local MySQL answers", b(d.up));
    m.gauge(
        "database_role",
        "1 for what the local server is: primary, replica, fenced (read-only, not replicating), down or unknown",
        DB_ROLES
            .iter()
            .map(|r| (vec![("role", r.to_string())], b(*r == d.role))),
    );
    m.one(
        "database_read_only",
        "1 while the local server is read-only",
        b(d.read_only),
    );
    m.one(
        "database_fit",
        "0 once the local server has been down for down_handover_ms (the node then gives up the VIPs)",
        b(d.fit),
    );
    m.one(
        "database_replica_ok",
        "1 while the local replica is caught up and offered for reads",
        b(d.replica_ok),
    );
    if let Some(r) = &d.replication {
        m.one(
            "database_replication_io_running",
            "1 while the replication IO thread runs (Slave_IO_Running = Yes)",
            b(r.io_running == "Yes"),
        );
        m.one(
            "database_replication_sql_running",
            "1 while the replication SQL thread runs",
            b(r.sql_running),
        );
        if let Some(lag) = r.seconds_behind {
            m.one(
                "database_replication_lag_seconds",
                "Seconds_Behind_Master of the local replica",
                lag as f64,
            );
        }
    }
    if let Some(v) = d.semisync_effective {
        m.one(
            "database_semisync_effective",
            "1 while semi-synchronous replication is in effect for the server's role",
            b(v),
        );
    }
    if let Some(p) = &d.last_promotion {
        m.one(
            "database_last_promotion_duration_seconds",
            "How long the last promotion took (catch-up included)",
            p.took_ms / 1000.0,
        );
        m.one(
            "database_last_promotion_caught_up",
            "1 if the last promotion applied everything received before becoming writable",
            b(p.caught_up),
        );
    }
    if let Some(r) = &d.last_rejoin {
        m.one(
            "database_last_rejoin_duration_seconds",
            "How long the last rejoin as a replica took",
            r.took_ms / 1000.0,
        );
    }
    m.one(
        "database_errant_transactions",
        "Transactions only this server has, blocking its rejoin (0 when none)",
        d.errant.as_ref().map_or(0.0, |e| e.transactions as f64),
    );
}

fn atlas(m: &mut Metrics, s: &Status) {
    let Some(a) = &s.atlas else { return };
    m.one(
        "atlas_reachable",
        "1 if the last reconciliation logged in to Atlas's admin port",
        b(a.reachable),
    );
    m.one(
        "atlas_in_sync",
        "1 while Atlas's backend table is as wanted",
        b(a.in_sync),
    );
    m.one(
        "atlas_serving",
        "1 while Atlas lists an rw backend that is up (it can take writes)",
        b(a.rw_serving()),
    );
    let mut by_kind: BTreeMap<(String, String), u64> = BTreeMap::new();
    for be in &a.backends {
        *by_kind
            .entry((be.kind.clone(), be.state.clone()))
            .or_default() += 1;
    }
    m.gauge(
        "atlas_backends",
        "Backends Atlas lists, by type (rw, ro) and state",
        by_kind
            .into_iter()
            .map(|((kind, state), n)| (vec![("type", kind), ("state", state)], n as f64)),
    );
    m.one(
        "atlas_consecutive_failures",
        "Reconciliations that failed in a row (0 once one succeeds)",
        f64::from(a.consecutive_failures),
    );
    m.counter(
        "atlas_steps_applied",
        "Backend changes applied to Atlas since start",
        [(Vec::new(), a.steps_applied)],
    );
    m.counter(
        "atlas_reconciliations",
        "Reconciliations finished since start",
        [(Vec::new(), a.rounds)],
    );
    if let Some(n) = a.failures_total {
        m.counter(
            "atlas_errors",
            "Reconciliations that failed since start",
            [(Vec::new(), n)],
        );
    }
}

#[cfg(test)]
mod tests;
