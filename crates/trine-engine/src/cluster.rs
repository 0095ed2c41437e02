//! Calls across engines: several engines sharing one Redis reach each other's functions.
//!
//! Each engine announces itself and the function ids its workers registered in Redis, and reads
//! everybody else's announcements, every [`ClusterOptions::sync_every`]:
//!
//! | Redis key | holds |
//! |---|---|
//! | `<prefix>:engines` | hash: engine id → its worker URL |
//! | `<prefix>:engine:<id>` | this engine's function ids (JSON), expiring after `ttl` unless renewed |
//!
//! So the directory (function id → engines) is in memory and a call never waits on Redis. A call
//! whose function has no local handler goes to an engine that announced it (round robin), over
//! a peer connection: this engine connects to the other as a worker (the Rust SDK, worker name
//! `trine-peer:<id>`) and makes an ordinary call. The answer or error comes back unchanged;
//! a peer that drops mid-call gives `invocation_stopped`, like a worker that drops. Forwarded
//! calls carry the W3C baggage entry `trine-peer=<origin engine id>`, and an engine never
//! forwards a call that carries it: one hop at most, no loops through stale directories.
//!
//! Failure: an engine that dies stops renewing its announcement; within `ttl` the others forget
//! its functions. Until then, calls sent to it fail with `invocation_stopped` (or the connect
//! error as `function_not_found`). Redis unreachable: the directory keeps its last contents
//! and local calls are unaffected.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::OnceCell;
use trine_protocol::{codes, ErrorBody};

use crate::engine::{Call, Engine, WeakEngine};
use crate::registry::Handler;
use crate::worker::{lock, CallOutcome};

/// The baggage key marking a forwarded call.
const PEER_BAGGAGE: &str = "trine-peer";

/// Settings of cluster mode.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub redis_url: String,
    /// Names the group: engines with the same prefix on one Redis form one cluster.
    pub key_prefix: String,
    /// The worker URL other engines connect to (`ws://host:port`).
    pub advertise_url: String,
    pub sync_every: Duration,
    /// An engine that has not renewed its announcement for this long is forgotten.
    pub ttl: Duration,
}

/// One other engine.
struct Peer {
    url: String,
    link: OnceCell<trine_sdk::Worker>,
}

/// The running cluster membership.
pub struct Cluster {
    id: String,
    options: ClusterOptions,
    engine: WeakEngine,
    /// function id → engine ids announcing it (other engines only).
    directory: RwLock<HashMap<String, Vec<String>>>,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    next: AtomicUsize,
}

impl Cluster {
    /// This engine's id in the cluster.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether a call was already forwarded once.
    pub fn is_forwarded(call: &Call) -> bool {
        call.baggage
            .as_deref()
            .is_some_and(|b| b.split(',').any(|e| e.trim().starts_with(PEER_BAGGAGE)))
    }

    /// An engine announcing `function_id`, if any.
    fn pick(&self, function_id: &str) -> Option<Arc<Peer>> {
        let engines = self
            .directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(function_id)
            .cloned()?;
        if engines.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % engines.len();
        lock(&self.peers).get(&engines[i]).cloned()
    }

    /// Forwards a call with no local handler; `None` when no other engine has the function.
    pub async fn forward(&self, call: Call, timeout: Duration) -> Option<CallOutcome> {
        let peer = self.pick(&call.function_id)?;
        let link = match peer
            .link
            .get_or_try_init(|| async {
                trine_sdk::Worker::connect(
                    &peer.url,
                    trine_sdk::WorkerOptions {
                        name: Some(format!("trine-peer:{}", self.id)),
                        connect_timeout: Duration::from_secs(5),
                        ..Default::default()
                    },
                )
                .await
            })
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(peer = %peer.url, error = %e, "cluster: cannot reach a peer engine");
                return Some(Err(ErrorBody::new(
                    codes::FUNCTION_NOT_FOUND,
                    format!(
                        "Function {} not found here, and the engine that has it ({}) is unreachable: {e}",
                        call.function_id, peer.url
                    ),
                )));
            }
        };
        if !link.is_connected() {
            // The peer is away (its link is reconnecting): as for a worker that left, the
            // function is not available right now; queued jobs wait for it.
            return Some(Err(ErrorBody::new(
                codes::FUNCTION_NOT_FOUND,
                format!(
                    "Function {} not found here, and the engine that has it ({}) is not connected",
                    call.function_id, peer.url
                ),
            )));
        }
        let baggage = match call.baggage.as_deref() {
            Some(b) if !b.is_empty() => format!("{b},{PEER_BAGGAGE}={}", self.id),
            _ => format!("{PEER_BAGGAGE}={}", self.id),
        };
        let out = link
            .call_with_baggage(&call.function_id, call.data, timeout, baggage)
            .await;
        Some(match out {
            Ok(Value::Null) => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(trine_sdk::Error::Remote(body)) => Err(body),
            Err(trine_sdk::Error::Timeout) => Err(ErrorBody::new(
                codes::INVOCATION_TIMEOUT,
                format!(
                    "Invocation of {} timed out after {} ms (on engine {})",
                    call.function_id,
                    timeout.as_millis(),
                    peer.url
                ),
            )),
            Err(e) => Err(ErrorBody::new(
                codes::INVOCATION_STOPPED,
                format!(
                    "Invocation stopped: the engine running it ({}) went away: {e}",
                    peer.url
                ),
            )),
        })
    }

    /// `engine::cluster::info`: this engine, its peers, and which functions each peer offers.
    pub fn info(&self) -> Value {
        let directory = self
            .directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let peers: Vec<Value> = lock(&self.peers)
            .iter()
            .map(|(id, p)| {
                let mut functions: Vec<&String> = directory
                    .iter()
                    .filter(|(_, engines)| engines.contains(id))
                    .map(|(f, _)| f)
                    .collect();
                functions.sort();
                serde_json::json!({"id": id, "url": p.url, "connected": p.link.initialized(), "functions": functions})
            })
            .collect();
        serde_json::json!({
            "id": self.id,
            "key_prefix": self.options.key_prefix,
            "advertise_url": self.options.advertise_url,
            "peers": peers,
        })
    }

    /// Function ids this engine's workers registered.
    fn local_functions(engine: &Engine) -> BTreeSet<String> {
        engine
            .registry()
            .functions
            .iter()
            .filter(|(_, e)| matches!(e.handler, Handler::Worker(_)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Applies everybody's announcements (`engines`: id → (url, function ids)).
    fn apply(&self, engines: Vec<(String, String, Vec<String>)>) {
        let mut directory: HashMap<String, Vec<String>> = HashMap::new();
        let mut peers = lock(&self.peers);
        let mut live = BTreeSet::new();
        for (id, url, functions) in engines {
            if id == self.id {
                continue;
            }
            live.insert(id.clone());
            let replace = peers.get(&id).is_none_or(|p| p.url != url);
            if replace {
                peers.insert(
                    id.clone(),
                    Arc::new(Peer {
                        url,
                        link: OnceCell::new(),
                    }),
                );
            }
            for f in functions {
                directory.entry(f).or_default().push(id.clone());
            }
        }
        // Forget engines that stopped announcing (their connections close when dropped).
        peers.retain(|id, _| live.contains(id));
        drop(peers);
        *self.directory.write().unwrap_or_else(|e| e.into_inner()) = directory;
    }
}

/// One announcement round: publish ours, read everybody's.
fn sync_once(
    conn: &mut redis::Connection,
    options: &ClusterOptions,
    id: &str,
    functions: &BTreeSet<String>,
) -> redis::RedisResult<Vec<(String, String, Vec<String>)>> {
    let engines_key = format!("{}:engines", options.key_prefix);
    let own = serde_json::to_string(functions).unwrap_or_else(|_| "[]".into());
    let ttl_ms = options.ttl.as_millis().max(1) as u64;
    redis::pipe()
        .cmd("HSET")
        .arg(&engines_key)
        .arg(id)
        .arg(&options.advertise_url)
        .ignore()
        .cmd("SET")
        .arg(format!("{}:engine:{id}", options.key_prefix))
        .arg(own)
        .arg("PX")
        .arg(ttl_ms)
        .ignore()
        .query::<()>(conn)?;
    let all: Vec<(String, String)> = redis::cmd("HGETALL").arg(&engines_key).query(conn)?;
    // Every engine's announcement in one round trip.
    let mut mget = redis::cmd("MGET");
    for (other, _) in &all {
        mget.arg(format!("{}:engine:{other}", options.key_prefix));
    }
    let announced: Vec<Option<String>> = if all.is_empty() {
        Vec::new()
    } else {
        mget.query(conn)?
    };
    let mut out = Vec::with_capacity(all.len());
    let mut gone = Vec::new();
    for ((other, url), text) in all.into_iter().zip(announced) {
        match text {
            Some(text) => {
                let fns: Vec<String> = serde_json::from_str(&text).unwrap_or_default();
                out.push((other, url, fns));
            }
            None => gone.push(other),
        }
    }
    if !gone.is_empty() {
        redis::cmd("HDEL")
            .arg(&engines_key)
            .arg(&gone)
            .query::<()>(conn)?;
    }
    Ok(out)
}

/// Joins the cluster: announces this engine and keeps the directory fresh (a thread of its own,
/// since the Redis client is blocking). Call inside the runtime once the worker listener runs.
pub fn install(engine: &Engine, options: ClusterOptions) -> Result<Arc<Cluster>, String> {
    let client = redis::Client::open(options.redis_url.as_str())
        .map_err(|e| format!("cluster: invalid Redis URL: {e}"))?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .map_err(|e| format!("cluster: cannot reach Redis at {}: {e}", options.redis_url))?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let id = uuid::Uuid::new_v4().to_string();
    let cluster = Arc::new(Cluster {
        id: id.clone(),
        options: options.clone(),
        engine: engine.downgrade(),
        directory: RwLock::new(HashMap::new()),
        peers: Mutex::new(HashMap::new()),
        next: AtomicUsize::new(0),
    });
    // First round now, so the directory is ready when workers start calling.
    let first = sync_once(&mut conn, &options, &id, &Cluster::local_functions(engine))
        .map_err(|e| format!("cluster: announcing this engine failed: {e}"))?;
    cluster.apply(first);
    engine.registry().add_builtin(
        "engine::cluster::info",
        "This engine's cluster id, its peer engines and the functions they offer",
        crate::builtins::bound(&cluster, |c, _| async move { Ok(Some(c.info())) }),
    );
    tracing::info!(id = %id, prefix = %options.key_prefix, advertise = %options.advertise_url,
        "cluster: this engine reaches functions registered on the other engines of the group");
    let weak = Arc::downgrade(&cluster);
    let stop = engine.shutdown_token().clone();
    std::thread::Builder::new()
        .name("trine-cluster".into())
        .spawn(move || {
            let mut conn = Some(conn);
            while !stop.is_cancelled() {
                std::thread::sleep(options.sync_every);
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                let Some(engine) = cluster.engine.upgrade() else {
                    return;
                };
                let functions = Cluster::local_functions(&engine);
                drop(engine);
                if conn.is_none() {
                    conn = client
                        .get_connection_with_timeout(Duration::from_secs(2))
                        .ok();
                    if let Some(c) = conn.as_mut() {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    }
                }
                let Some(c) = conn.as_mut() else {
                    tracing::warn!(
                        "cluster: Redis unreachable; the directory keeps its last contents"
                    );
                    continue;
                };
                match sync_once(c, &options, &cluster.id, &functions) {
                    Ok(engines) => cluster.apply(engines),
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: announcement round failed");
                        conn = None;
                    }
                }
            }
        })
        .map_err(|e| format!("cluster: cannot start its thread: {e}"))?;
    Ok(cluster)
}
