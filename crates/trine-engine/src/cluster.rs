//! A group of engines sharing one Redis (docs/cluster.md): calls across engines, the owner
//! engine, HTTP routes of the whole group, and trigger registrations passed on to the owner.
//!
//! Each engine announces itself in Redis, and reads everybody else's announcements, every
//! [`ClusterOptions::sync_every`]:
//!
//! | Redis key | holds |
//! |---|---|
//! | `<prefix>:engines` | hash: engine id → its worker URL |
//! | `<prefix>:engine:<id>` | its announcement (JSON: worker function ids, HTTP routes, owner flag), expiring after `ttl` unless renewed |
//!
//! So the directory (function id → engines) is in memory and a call never waits on Redis. A call
//! whose function has no local handler goes to an engine that announced it (round robin,
//! skipping engines whose link is down), else, on a non-owner, to the owner engine (which runs
//! the state, stream and queue functions). It travels over a peer connection: this engine
//! connects to the other as a worker (the Rust SDK, worker name `trine-peer:<id>`) and makes an
//! ordinary call. The answer or error comes back unchanged; a peer that drops mid-call gives
//! `invocation_stopped`, like a worker that drops. A call that arrives over a peer connection is
//! served by local handlers only: one hop at most, no loops through stale directories. (Forwarded
//! calls also carry the W3C baggage entry `trine-peer=<origin engine id>`, for tracing.)
//!
//! Failure: an engine that dies stops renewing its announcement; within `ttl` the others forget
//! it. Until then calls skip it when another engine offers the function, else fail with
//! `function_not_found` (queued jobs wait for the function). Redis unreachable: the directory
//! keeps its last contents and local calls are unaffected.

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

/// The baggage key naming the engine a forwarded call comes from (for tracing).
const PEER_BAGGAGE: &str = "trine-peer";

/// Name prefix of the worker connections engines open to each other.
const PEER_WORKER_PREFIX: &str = "trine-peer:";

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
    /// This engine holds the data set's lease: it runs the state, stream and queue modules for
    /// the group, and the other engines send it every call they have no handler for.
    pub owner: bool,
    /// On an engine that is not the owner: the trigger registrations of its workers that the
    /// owner serves (state, stream, queue, cron, pub/sub), re-registered on every new owner.
    pub forwarder: Option<Arc<TriggerForwarder>>,
}

/// What one engine announces.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Announcement {
    #[serde(default)]
    functions: BTreeSet<String>,
    #[serde(default)]
    owner: bool,
    /// When this engine started (ms since the epoch). While a dead owner's announcement has not
    /// expired yet, two engines claim to be the owner: the one that started last took over.
    #[serde(default)]
    since: u64,
    /// HTTP triggers of this engine's workers: every engine of the group serves them.
    #[serde(default)]
    http: Vec<crate::http::RemoteRoute>,
    /// `stream:join` / `stream:leave` triggers of this engine's workers: every engine runs them
    /// for its own sockets.
    #[serde(default)]
    joins: Vec<crate::stream::triggers::AnnouncedTrigger>,
    #[serde(default)]
    leaves: Vec<crate::stream::triggers::AnnouncedTrigger>,
}

/// Trigger registrations a non-owner engine passes on to the owner engine.
///
/// It is the provider of the owner-run trigger types on such an engine: a worker's registration
/// is kept here (so it is never lost while no owner is reachable) and registered, under the
/// same trigger id, on the owner through this engine's peer connection to it, which replays it
/// whenever that connection comes back. When another engine becomes the owner, every kept
/// registration goes to it. The owner merges identical registrations from several engines into
/// one logical trigger (replicas share the work), and its deliveries reach the function wherever
/// it is registered through the call routing.
#[derive(Default)]
pub struct TriggerForwarder {
    entries: Mutex<std::collections::BTreeMap<String, trine_protocol::RegisterTrigger>>,
    owner: Mutex<Option<Arc<Peer>>>,
}

impl std::fmt::Debug for TriggerForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerForwarder")
            .field("registrations", &self.len())
            .finish()
    }
}

impl TriggerForwarder {
    /// Registration ids currently kept.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The trigger types the owner engine serves for the group.
    const OWNER_RUN: [(&'static str, &'static str); 5] = [
        (
            "state",
            "State trigger (served by the group's owner engine)",
        ),
        (
            "stream",
            "Stream item changes and events (served by the group's owner engine)",
        ),
        (
            "durable:subscriber",
            "Durable topic subscriber (served by the group's owner engine)",
        ),
        ("cron", "Cron schedule (served by the group's owner engine)"),
        (
            "subscribe",
            "Pub/sub subscription (served by the group's owner engine)",
        ),
    ];

    /// Makes a forwarder the provider of the owner-run trigger types on `engine` (an engine of a
    /// group that is not the owner; call before workers connect).
    pub fn install(engine: &Engine) -> Arc<TriggerForwarder> {
        let f = Arc::new(TriggerForwarder::default());
        let mut reg = engine.registry();
        for (id, description) in Self::OWNER_RUN {
            reg.add_builtin_trigger_type(id, description, f.clone());
        }
        f
    }

    /// Sends every kept registration to a new owner (whose link is up).
    fn attach(&self, peer: Arc<Peer>) {
        let entries = lock(&self.entries);
        let previous = lock(&self.owner)
            .replace(peer.clone())
            .filter(|p| !Arc::ptr_eq(p, &peer));
        if let Some(old) = previous.as_ref().and_then(|p| p.link.get()).cloned() {
            // The previous owner's process is gone (an engine changes role by restarting, under
            // a new id): close the link so it stops replaying these registrations to whatever
            // runs at that address now. Not unregistering them one by one: the ids are the same
            // as the new owner's, and the owner drops a connection's triggers only while that
            // connection still holds them.
            tokio::spawn(async move { old.shutdown().await });
        }
        if let Some(link) = peer.link.get() {
            for t in entries.values() {
                link.register_trigger_with(t.clone());
            }
            tracing::info!(owner = %peer.url, triggers = entries.len(),
                "cluster: trigger registrations passed on to the owner engine");
        }
    }
}

impl crate::registry::TriggerProvider for TriggerForwarder {
    fn register(&self, trigger: &crate::registry::TriggerEntry) -> Result<(), String> {
        let t = trigger.registration();
        let mut entries = lock(&self.entries);
        if let Some(link) = lock(&self.owner).as_ref().and_then(|p| p.link.get()) {
            link.register_trigger_with(t.clone());
        }
        entries.insert(t.id.clone(), t);
        Ok(())
    }

    fn unregister(&self, trigger: &crate::registry::TriggerEntry) {
        let mut entries = lock(&self.entries);
        entries.remove(&trigger.id);
        if let Some(link) = lock(&self.owner).as_ref().and_then(|p| p.link.get()) {
            link.unregister_trigger(&trigger.id);
        }
    }
}

/// HTTP routes, `stream:join` and `stream:leave` triggers announced by the other engines.
type RemoteTriggers = (
    Vec<crate::http::RemoteRoute>,
    Vec<crate::stream::triggers::AnnouncedTrigger>,
    Vec<crate::stream::triggers::AnnouncedTrigger>,
);

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
    /// The owner engine (when it is another one).
    owner: RwLock<Option<String>>,
    /// The other engines' HTTP routes and join/leave triggers, as last applied.
    last_remote: Mutex<RemoteTriggers>,
    next: AtomicUsize,
    runtime: tokio::runtime::Handle,
    /// When this engine joined (ms since the epoch), announced as `since`.
    started_ms: u64,
}

impl Cluster {
    /// This engine's id in the cluster.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether a call arrived from another engine of the group (over its peer connection): it
    /// is served by local handlers only, never forwarded again. Calls that a local worker makes
    /// while handling a forwarded call are ordinary calls (the SDKs pass the incoming baggage on
    /// to them, so the baggage entry cannot tell them apart).
    pub fn is_forwarded(call: &Call) -> bool {
        call.caller
            .worker()
            .is_some_and(|w| w.name().starts_with(PEER_WORKER_PREFIX))
    }

    /// Whether another engine announces `function_id`.
    pub fn has_remote(&self, function_id: &str) -> bool {
        self.directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(function_id)
            .is_some_and(|e| !e.is_empty())
    }

    /// Whether this engine shares a data set whose owner is another engine (it then sends the
    /// owner every call it has no handler for). Engines that only reach each other's functions
    /// (no shared data set) are neither owner nor follower.
    fn is_follower(&self) -> bool {
        !self.options.owner && self.options.forwarder.is_some()
    }

    /// The engines announcing `function_id`, starting at the next in round robin; else (on a
    /// non-owner) the owner engine, which runs the state, stream and queue functions and answers
    /// for unknown ids.
    fn candidates(&self, function_id: &str) -> Vec<Arc<Peer>> {
        let engines = self
            .directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(function_id)
            .cloned()
            .unwrap_or_default();
        let peers = lock(&self.peers);
        if engines.is_empty() {
            if !self.is_follower() {
                return Vec::new();
            }
            let owner = self.owner.read().unwrap_or_else(|e| e.into_inner()).clone();
            return owner
                .and_then(|o| peers.get(&o).cloned())
                .into_iter()
                .collect();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % engines.len();
        (0..engines.len())
            .filter_map(|i| peers.get(&engines[(start + i) % engines.len()]).cloned())
            .collect()
    }

    /// The peer connection to `peer`, opened on first use.
    async fn link<'a>(&self, peer: &'a Peer) -> Result<&'a trine_sdk::Worker, trine_sdk::Error> {
        peer.link
            .get_or_try_init(|| async {
                trine_sdk::Worker::connect(
                    &peer.url,
                    trine_sdk::WorkerOptions {
                        name: Some(format!("{PEER_WORKER_PREFIX}{}", self.id)),
                        connect_timeout: Duration::from_secs(5),
                        ..Default::default()
                    },
                )
                .await
            })
            .await
    }

    /// Forwards a call with no local handler; `None` when no other engine has the function.
    pub async fn forward(&self, call: Call, timeout: Duration) -> Option<CallOutcome> {
        let candidates = self.candidates(&call.function_id);
        if candidates.is_empty() {
            if self.is_follower() {
                return Some(Err(ErrorBody::new(
                    codes::FUNCTION_NOT_FOUND,
                    format!(
                        "Function {} not found on this engine, and the group has no owner engine right now (a takeover is in progress); retry shortly",
                        call.function_id
                    ),
                )));
            }
            return None;
        }
        // The first engine whose link is up; an engine that is away (killed, restarting) is
        // skipped while another one offers the function.
        let mut unavailable = None;
        let mut chosen = None;
        for peer in candidates {
            match self.link(&peer).await {
                Ok(link) if link.is_connected() => {
                    chosen = Some((peer.clone(), link.clone()));
                    break;
                }
                Ok(_) => {
                    unavailable = Some(format!(
                        "the engine that has it ({}) is not connected",
                        peer.url
                    ));
                }
                Err(e) => {
                    tracing::warn!(peer = %peer.url, error = %e, "cluster: cannot reach a peer engine");
                    unavailable = Some(format!(
                        "the engine that has it ({}) is unreachable: {e}",
                        peer.url
                    ));
                }
            }
        }
        let Some((peer, link)) = chosen else {
            // As for a worker that left, the function is not available right now; queued jobs
            // wait for it.
            return Some(Err(ErrorBody::new(
                codes::FUNCTION_NOT_FOUND,
                format!(
                    "Function {} not found here, and {}",
                    call.function_id,
                    unavailable.unwrap_or_default()
                ),
            )));
        };
        let mut entries: Vec<&str> = call
            .baggage
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with(PEER_BAGGAGE))
            .collect();
        let own = format!("{PEER_BAGGAGE}={}", self.id);
        entries.push(&own);
        let baggage = entries.join(",");
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
            "owner": self.options.owner,
            "owner_engine": if self.options.owner { Some(self.id.clone()) } else { self.owner.read().unwrap_or_else(|e| e.into_inner()).clone() },
            "forwarded_triggers": self.options.forwarder.as_ref().map(|f| f.len()),
            "remote_http_routes": self.engine.upgrade().map(|e| e.http_routes().remote_len()),
            "peers": peers,
        })
    }

    /// What this engine announces: its workers' function ids and HTTP routes, and its role.
    fn announcement(&self, engine: &Engine) -> Announcement {
        let functions = engine
            .registry()
            .functions
            .iter()
            .filter(|(_, e)| matches!(e.handler, Handler::Worker(_)))
            .map(|(k, _)| k.clone())
            .collect();
        let (joins, leaves) = engine
            .streams()
            .map(|s| (s.joins().local_triggers(), s.leaves().local_triggers()))
            .unwrap_or_default();
        Announcement {
            functions,
            owner: self.options.owner,
            since: self.started_ms,
            http: engine.http_routes().local_triggers(),
            joins,
            leaves,
        }
    }

    /// Applies everybody's announcements (`engines`: id → (url, announcement)).
    fn apply(&self, mut engines: Vec<(String, String, Announcement)>) {
        // In engine order, so that an unchanged group gives the same lists every round.
        engines.sort_by(|a, b| a.0.cmp(&b.0));
        let mut directory: HashMap<String, Vec<String>> = HashMap::new();
        let mut routes = Vec::new();
        let (mut joins, mut leaves) = (Vec::new(), Vec::new());
        let mut owner = None;
        let mut peers = lock(&self.peers);
        let mut live = BTreeSet::new();
        for (id, url, announced) in engines {
            if id == self.id {
                continue;
            }
            if announced.owner
                && owner
                    .as_ref()
                    .is_none_or(|(_, since)| announced.since > *since)
            {
                owner = Some((id.clone(), announced.since));
            }
            routes.extend(announced.http);
            joins.extend(announced.joins);
            leaves.extend(announced.leaves);
            let functions = announced.functions;
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
        let owner = owner.map(|(id, _)| id);
        let owner_peer = owner.as_ref().and_then(|o| peers.get(o).cloned());
        drop(peers);
        let changed = {
            let mut d = self.directory.write().unwrap_or_else(|e| e.into_inner());
            let changed = *d != directory;
            *d = directory;
            changed
        };
        let engine = self.engine.upgrade();
        if let Some(engine) = &engine {
            // The route table and the join/leave lists are rebuilt only when an announcement
            // changed them, not every round (requests read them).
            let remote = (routes, joins, leaves);
            let mut last = lock(&self.last_remote);
            if *last != remote {
                engine.http_routes().set_remote(remote.0.clone());
                if let Some(streams) = engine.streams() {
                    streams.joins().set_remote(remote.1.clone());
                    streams.leaves().set_remote(remote.2.clone());
                }
                *last = remote;
            }
            drop(last);
            if changed {
                // Queued jobs waiting for a function wake up when another engine offers it.
                engine.functions_changed_elsewhere();
            }
        }
        let new_owner = {
            let mut o = self.owner.write().unwrap_or_else(|e| e.into_inner());
            let new = *o != owner;
            *o = owner;
            new
        };
        if let (true, Some(peer), Some(fwd)) =
            (new_owner, owner_peer, self.options.forwarder.clone())
        {
            let Some(engine) = engine else { return };
            let Some(cluster) = engine.cluster().cloned() else {
                // The first round runs before the engine holds the cluster: the next one does it.
                *self.owner.write().unwrap_or_else(|e| e.into_inner()) = None;
                return;
            };
            self.runtime.spawn(async move {
                match cluster.link(&peer).await {
                    Ok(_) => fwd.attach(peer),
                    Err(e) => {
                        tracing::warn!(owner = %peer.url, error = %e, "cluster: cannot reach the owner engine; retrying");
                        // Forget it, so the next round tries again.
                        *cluster.owner.write().unwrap_or_else(|e| e.into_inner()) = None;
                    }
                }
            });
        }
    }
}

/// One announcement round: publish ours, read everybody's.
fn sync_once(
    conn: &mut redis::Connection,
    options: &ClusterOptions,
    id: &str,
    own: &Announcement,
) -> redis::RedisResult<Vec<(String, String, Announcement)>> {
    let engines_key = format!("{}:engines", options.key_prefix);
    let own = serde_json::to_string(own).unwrap_or_else(|_| "{}".into());
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
                let announced: Announcement = serde_json::from_str(&text).unwrap_or_default();
                out.push((other, url, announced));
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
    let client = trine_store::redis::nodelay_client(&options.redis_url)
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
        owner: RwLock::new(None),
        last_remote: Mutex::default(),
        next: AtomicUsize::new(0),
        runtime: tokio::runtime::Handle::current(),
        started_ms: crate::worker::now_ms(),
    });
    // First round now, so the directory is ready when workers start calling.
    let first = sync_once(&mut conn, &options, &id, &cluster.announcement(engine))
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
                let own = cluster.announcement(&engine);
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
                match sync_once(c, &options, &cluster.id, &own) {
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
