//! `trine serve`: merge settings, start the engine and listeners, stop cleanly on a signal.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use trine_engine::{Engine, EngineConfig};
use trine_server::config::{self, FileConfig};
use trine_server::settings::CorsSettings;
use trine_server::ServerSettings;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use trine_engine::state::StateOptions;
use trine_store::{
    FileStore, FileStoreOptions, LeaseKey, MemoryStore, OwnerLease, RedisStore, RedisStoreOptions,
    Store,
};

use crate::cli::{LogFormat, ServeArgs, StateStore};

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Applies a config file on top of the built-in defaults. Modules the file does not list are
/// disabled, as in iii (a file describes the whole engine).
fn apply_file(settings: &mut ServerSettings, file: &FileConfig) {
    if let Some(h) = &file.worker_manager.host {
        settings.worker.host = h.clone();
    }
    if let Some(p) = file.worker_manager.port {
        settings.worker.port = p;
    }
    match &file.http {
        None => settings.http.enabled = false,
        Some(h) => {
            let s = &mut settings.http;
            s.enabled = true;
            s.host = h
                .host
                .clone()
                .unwrap_or_else(|| config::DEFAULT_HOST.into());
            s.port = h.port.unwrap_or(config::DEFAULT_HTTP_PORT);
            s.default_timeout = Duration::from_millis(h.default_timeout_ms);
            s.concurrency_request_limit = h.concurrency_request_limit.max(1);
            if let Some(limit) = h.body_limit {
                s.body_limit = limit;
            }
            s.cors = h.cors.as_ref().map(|c| CorsSettings {
                allowed_origins: c.allowed_origins.clone(),
                allowed_methods: c
                    .allowed_methods
                    .iter()
                    .map(|m| m.to_ascii_uppercase())
                    .collect(),
            });
            s.ignore_trailing_slash = h.ignore_trailing_slash;
            s.null_result_grace = Duration::from_millis(h.null_result_grace_ms);
            let mut mw: Vec<_> = h
                .middleware
                .iter()
                .filter(|m| m.phase == "preHandler")
                .collect();
            mw.sort_by_key(|m| m.priority);
            s.middleware = mw.into_iter().map(|m| m.function_id.clone()).collect();
        }
    }
    match &file.stream {
        None => settings.stream.enabled = false,
        Some(st) => {
            settings.stream.enabled = true;
            settings.stream.host = st
                .host
                .clone()
                .unwrap_or_else(|| config::DEFAULT_HOST.into());
            settings.stream.port = st.port.unwrap_or(config::DEFAULT_STREAM_PORT);
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_tracing(args.log_format);
    let mut settings = ServerSettings::default();
    let mut engine_config = EngineConfig::default();
    // Without a config file the state module runs with Trine's defaults.
    let mut state_config = Some(config::StateConfig::default());
    let mut state_from_file = false;
    let mut stream_auth: Option<String> = None;
    // Without a config file the queue, cron and pub/sub modules run with defaults.
    let mut queue_block = Some(json!({}));
    let mut cron_block = Some(json!({}));
    let mut pubsub_block = Some(json!({}));

    if let Some(path) = &args.config {
        let file = config::load(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        for w in &file.warnings {
            tracing::warn!("config: {w}");
        }
        if !file.unimplemented.is_empty() {
            tracing::warn!(
                entries = %file.unimplemented.join(", "),
                "config lists workers Trine does not implement yet; they are not started"
            );
        }
        queue_block = file.queue.clone();
        cron_block = file.cron.clone();
        pubsub_block = file.pubsub.clone();
        apply_file(&mut settings, &file);
        state_config = file.state.clone();
        state_from_file = true;
        if let Some(st) = &file.stream {
            stream_auth = st.auth_function.clone();
            let state_adapter = file.state.as_ref().map(|s| s.adapter.name.as_str());
            match (st.adapter.name.as_str(), state_adapter) {
                ("kv", _) => {}
                ("redis", Some("redis")) => {
                    tracing::info!("iii-stream adapter redis: stream items live in the state module's Redis data set");
                }
                (other, _) => anyhow::bail!(
                    "iii-stream adapter `{other}` is not available in this Trine build; use `kv`, or `redis` together with an iii-state redis adapter"
                ),
            }
            if st.adapter.config.get("store_method").is_some()
                || st.adapter.config.get("file_path").is_some()
            {
                tracing::info!("iii-stream adapter settings: stream items live in the state store (one durable store per engine)");
            }
        }
        tracing::info!(path = %path.display(), "config file loaded");
    } else if std::path::Path::new("config.yaml").exists() {
        tracing::info!(
            "a config.yaml exists here but is not read; pass --config config.yaml to use it"
        );
    }

    // Flags and env vars win over the file.
    if let Some(h) = &args.host {
        settings.worker.host = h.clone();
        settings.http.host = h.clone();
        settings.stream.host = h.clone();
    }
    if let Some(p) = args.worker_port {
        settings.worker.port = p;
    }
    if let Some(p) = args.http_port {
        settings.http.port = p;
    }
    if let Some(p) = args.stream_port {
        settings.stream.port = p;
    }
    if let Some(ms) = args.http_timeout_ms {
        settings.http.default_timeout = Duration::from_millis(ms);
    }
    if let Some(b) = args.http_body_limit {
        settings.http.body_limit = b;
    }
    if let Some(m) = args.max_message_bytes {
        settings.worker.max_message_bytes = m;
    }
    if let Some(ms) = args.invocation_timeout_ms {
        engine_config.invocation_timeout = Duration::from_millis(ms);
    }
    if let Some(n) = args.max_inflight_per_worker {
        engine_config.max_inflight_per_worker = n.max(1);
    }
    if let Some(n) = args.log_capacity {
        engine_config.log_capacity = n.max(1);
    }

    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("data"));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;

    let engine = Engine::new(engine_config);
    // The engine's durable store, when state runs on the file store (shared by queues and cron).
    let mut durable_store: Option<Arc<dyn Store>> = None;
    let mut redis_lease: Option<OwnerLease> = None;
    let mut group: Option<Group> = None;
    // State and streams share one store (and one group-committing writer). It is opened when
    // either module runs; the state functions only when iii-state is on.
    let bridge_url = state_config
        .as_ref()
        .filter(|s| s.adapter.name == "bridge")
        .map(|s| {
            s.adapter
                .config
                .get("bridge_url")
                .and_then(|v| v.as_str())
                .unwrap_or("ws://localhost:49134")
                .to_owned()
        });
    if state_config.is_some() || settings.stream.enabled {
        // With the bridge adapter the local store serves streams and queues only.
        let functions = state_config.is_some() && bridge_url.is_none();
        let state = state_config.clone().unwrap_or_default();
        let mut plan = StatePlan::resolve(&args, &state, state_from_file && functions, &data_dir)?;
        plan.options.functions = functions;
        if !functions && bridge_url.is_none() {
            tracing::info!("state functions off (the config file does not list iii-state); the store serves streams");
        }
        let started = plan.start(&engine, args.cluster_redis_url.is_some())?;
        (durable_store, redis_lease, group) = (started.durable, started.lease, started.group);
        if let Some(url) = &bridge_url {
            trine_engine::state::bridge::install(&engine, url)
                .await
                .map_err(|e| anyhow::anyhow!("failed to initialize worker 'iii-state': {e}"))?;
        }
    } else {
        tracing::info!("state module off (the config file does not list iii-state)");
    }
    // A non-owner engine of a group runs no queues, cron or pub/sub of its own: their functions
    // are called on the owner, and its workers' registrations of owner-run trigger types are
    // passed on to the owner.
    let follower = group.as_ref().is_some_and(|g| !g.owner);
    let forwarder = follower.then(|| trine_engine::cluster::TriggerForwarder::install(&engine));
    if follower {
        queue_block = None;
        cron_block = None;
        pubsub_block = None;
    }
    if settings.stream.enabled {
        let mirror = group.as_ref().map(|g| {
            if g.owner {
                trine_engine::stream::mirror::MirrorWriter::start(&g.url, g.envelopes_key())
                    .map(trine_engine::stream::MirrorRole::Writer)
            } else {
                Ok(trine_engine::stream::MirrorRole::Reader {
                    redis_url: g.url.clone(),
                    key: g.envelopes_key(),
                })
            }
        });
        let mirror = match mirror {
            Some(m) => Some(m.map_err(|e| anyhow::anyhow!("starting the stream mirror: {e}"))?),
            None => None,
        };
        let options = trine_engine::stream::StreamOptions {
            auth_function: stream_auth.clone(),
            mirror,
            ..Default::default()
        };
        engine
            .enable_streams(options)
            .map_err(|e| anyhow::anyhow!("starting the stream module: {e}"))?;
    }
    if let Some(block) = &queue_block {
        let store = start_queues(
            &engine,
            &args,
            block,
            state_from_file,
            &data_dir,
            &SharedStore {
                store: durable_store.clone(),
                on_redis: redis_lease.is_some(),
                in_group: group.is_some(),
            },
        )?;
        if durable_store.is_none() {
            durable_store = store;
        }
    } else {
        tracing::info!("queue module off (the config file does not list iii-queue)");
    }
    if let Some(block) = &cron_block {
        check_adapter("iii-cron", block, &["kv"])?;
        if durable_store.is_none() {
            tracing::info!("cron: no durable store; a tick could run again after a restart");
        }
        trine_engine::cron::install(&engine, durable_store.clone());
    }
    if let Some(block) = &pubsub_block {
        check_adapter("iii-pubsub", block, &["local"])?;
        trine_engine::pubsub::install(&engine);
    }
    let shutdown = CancellationToken::new();
    let addrs = trine_server::start(&engine, &settings, shutdown.clone()).await?;

    if let Some(redis_url) = &args.cluster_redis_url {
        let advertise_url = args.advertise_url.clone().unwrap_or_else(|| {
            if addrs.worker.ip().is_unspecified() {
                tracing::warn!("cluster: the worker listener is bound to {}; pass --advertise-url with an address other engines can reach", addrs.worker);
            }
            format!("ws://{}", addrs.worker)
        });
        engine
            .enable_cluster(trine_engine::cluster::ClusterOptions {
                redis_url: redis_url.clone(),
                // The group is named by the data set it shares, unless told otherwise.
                key_prefix: args.cluster_prefix.clone().unwrap_or_else(|| {
                    group
                        .as_ref()
                        .map(|g| format!("{}:group", g.prefix))
                        .unwrap_or_else(|| "trine".into())
                }),
                advertise_url,
                sync_every: Duration::from_millis(250),
                ttl: Duration::from_secs(5),
                owner: group.as_ref().is_some_and(|g| g.owner),
                forwarder,
            })
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    // In a group, an engine changes role by re-executing itself (same pid, ports and flags):
    // a non-owner that wins the lease after the owner died comes back as the owner (recovering
    // owed deliveries and queued jobs from the data set), and an owner that lost its lease comes
    // back as a non-owner. Workers and clients reconnect on their own.
    let role_change = CancellationToken::new();
    // What the re-executed process gets: a lease this engine just took (kept renewed until the
    // exec), or the token of a lease that is still ours.
    let handover: Handover = Arc::default();
    if let Some(g) = group.clone() {
        let lost = redis_lease.as_ref().map(|l| l.lost_flag());
        tokio::spawn(watch_role(
            g,
            lost,
            shutdown.clone(),
            role_change.clone(),
            handover.clone(),
        ));
    }
    let ready = json!({
        "worker_url": format!("ws://{}", addrs.worker),
        "http_url": addrs.http.map(|a| format!("http://{a}")),
        "stream_url": addrs.stream.map(|a| format!("ws://{a}")),
        "data_dir": data_dir.display().to_string(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    tracing::info!(
        workers = %addrs.worker,
        http = ?addrs.http,
        streams = ?addrs.stream,
        data_dir = %data_dir.display(),
        "trine {} ready", env!("CARGO_PKG_VERSION")
    );
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "trine ready {ready}");
        let _ = out.flush();
    }

    let reexec = tokio::select! {
        _ = wait_for_signal() => false,
        _ = role_change.cancelled() => true,
    };
    tracing::info!("shutting down");
    shutdown.cancel();
    engine.shutdown().await;
    if reexec {
        // The lease is never released here: either another engine holds it, or the process
        // this one becomes adopts it with the token.
        let (taken, token) =
            std::mem::take(&mut *handover.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(l) = taken {
            l.hand_over();
        }
        if let Some(l) = redis_lease.take() {
            l.hand_over();
        }
        let ports = [
            ("--worker-port", Some(addrs.worker.port())),
            ("--http-port", addrs.http.map(|a| a.port())),
            ("--stream-port", addrs.stream.map(|a| a.port())),
        ];
        return reexec_self(token, &ports);
    }
    // Committers are stopped: the data set can go to another engine.
    drop(redis_lease);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// What an engine that changes role hands to the process it becomes: a lease it just took
/// (kept renewed until the exec), and the token of a lease that is its own.
type Handover = Arc<std::sync::Mutex<(Option<OwnerLease>, Option<String>)>>;

/// Watches this engine's role in its group every 500 ms and cancels `changed` when it must
/// restart in the other one: a non-owner takes the lease once it is free (the owner died); an
/// owner whose lease `lost` says may be gone waits until Redis answers, then steps down
/// (keeping the lease if it is still its own). One Redis connection is kept for the checks.
async fn watch_role(
    g: Group,
    lost: Option<Arc<std::sync::atomic::AtomicBool>>,
    stop: CancellationToken,
    changed: CancellationToken,
    handover: Handover,
) {
    let Ok(mut probe) = LeaseKey::new(&g.url, &g.lease_key()) else {
        return;
    };
    // Runs a blocking lease request off the runtime, keeping the probe's connection.
    async fn blocking<T: Send + 'static>(
        probe: LeaseKey,
        f: impl FnOnce(&mut LeaseKey) -> T + Send + 'static,
    ) -> Option<(LeaseKey, T)> {
        tokio::task::spawn_blocking(move || {
            let mut probe = probe;
            let out = f(&mut probe);
            (probe, out)
        })
        .await
        .ok()
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(lost) = &lost else {
            let (token, ttl) = (g.token.clone(), g.ttl);
            let Some((p, taken)) = blocking(probe, move |p| p.try_acquire(&token, ttl)).await
            else {
                return;
            };
            probe = p;
            match taken {
                Ok(Some(lease)) => {
                    tracing::warn!("group: the owner engine is gone and this engine took the data set's lease; restarting as the owner");
                    let mut h = handover.lock().unwrap_or_else(|e| e.into_inner());
                    h.1 = Some(lease.token().to_owned());
                    h.0 = Some(lease);
                    drop(h);
                    changed.cancel();
                    return;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "group: cannot check the data set's lease"),
            }
            continue;
        };
        if !lost.load(std::sync::atomic::Ordering::Acquire) {
            continue;
        }
        tracing::error!(
            "group: this engine may have lost the data set's lease; it restarts once Redis answers"
        );
        let holder = loop {
            let Some((p, h)) = blocking(probe, |p| p.holder()).await else {
                return;
            };
            probe = p;
            match h {
                Ok(h) => break h,
                Err(e) => tracing::warn!(error = %e, "group: Redis still unreachable"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        };
        if holder.as_deref() == Some(g.token.as_str()) {
            handover.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(g.token.clone());
        }
        changed.cancel();
        return;
    }
}

/// Replaces this process with a fresh start of the same command line (same pid), on the ports
/// it listens on now (an engine started with port 0 keeps the ones it got, so its workers and
/// clients reconnect to it), carrying the lease token when it takes the data set over.
fn reexec_self(token: Option<String>, ports: &[(&str, Option<u16>)]) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut cmd = std::process::Command::new(exe);
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let text = a.to_string_lossy();
        if let Some((flag, _)) = ports
            .iter()
            .find(|(f, _)| text == *f || text.starts_with(&format!("{f}=")))
        {
            if text == *flag {
                args.next();
            }
            continue;
        }
        cmd.arg(a);
    }
    for (flag, port) in ports {
        if let Some(p) = port {
            cmd.arg(format!("{flag}={p}"));
        }
    }
    match token {
        Some(t) => cmd.env(LEASE_TOKEN_ENV, t),
        None => cmd.env_remove(LEASE_TOKEN_ENV),
    };
    tracing::info!("group: restarting in place");
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let e = cmd.exec();
        Err(anyhow::anyhow!(
            "re-executing {}: {e}",
            std::env::args().next().unwrap_or_default()
        ))
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().context("restarting")?;
        Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
    }
}

/// What [`StatePlan::start`] opened.
struct Started {
    /// The store queues and cron share with state, when it keeps data across restarts (the file
    /// store, or the Redis data set).
    durable: Option<Arc<dyn Store>>,
    /// The ownership lease of a Redis data set (held until shutdown).
    lease: Option<OwnerLease>,
    /// In a group: this engine's role and the data set's Redis.
    group: Option<Group>,
}

/// An engine's place in a group of engines sharing one Redis data set (docs/cluster.md).
#[derive(Clone)]
struct Group {
    owner: bool,
    url: String,
    prefix: String,
    ttl: Duration,
    /// The token this engine takes the lease with (kept across a hand-over).
    token: String,
}

impl Group {
    fn lease_key(&self) -> String {
        format!("{}:owner", self.prefix)
    }

    fn envelopes_key(&self) -> String {
        format!("{}:envelopes", self.prefix)
    }
}

/// The environment variable carrying a lease token to the process an engine re-executes into.
const LEASE_TOKEN_ENV: &str = "TRINE_LEASE_TOKEN";

/// Where and how the state module stores data, after flags, env vars and the config file.
struct StatePlan {
    store: StateStore,
    /// `adapter: redis`: the server URL, the data set's key prefix, the lease TTL.
    redis: Option<(String, String, Duration)>,
    dir: PathBuf,
    cache_bytes: u64,
    checkpoint_bytes: u64,
    options: StateOptions,
}

impl StatePlan {
    fn resolve(
        args: &ServeArgs,
        state: &config::StateConfig,
        from_file: bool,
        data_dir: &Path,
    ) -> anyhow::Result<Self> {
        let adapter = &state.adapter;
        let redis = (adapter.name == "redis").then(|| {
            let url = adapter
                .config
                .get("redis_url")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .or_else(|| std::env::var("REDIS_URL").ok())
                .unwrap_or_else(|| "redis://localhost:6379".to_owned());
            let prefix = adapter
                .config
                .get("key_prefix")
                .and_then(|v| v.as_str())
                .unwrap_or("trine")
                .to_owned();
            let ttl = adapter
                .config
                .get("lease_ttl_ms")
                .and_then(|v| v.as_u64())
                .unwrap_or(10_000)
                .max(100);
            (url, prefix, Duration::from_millis(ttl))
        });
        let method = adapter.config.get("store_method").and_then(|v| v.as_str());
        let store = match (args.state_store, method) {
            (Some(s), _) => s,
            (None, Some("file_based")) => StateStore::FileBased,
            (None, Some(_)) => StateStore::InMemory,
            // iii's kv adapter defaults to in_memory; without a config file Trine is durable.
            (None, None) if from_file => StateStore::InMemory,
            (None, None) => StateStore::FileBased,
        };
        let dir = match adapter.config.get("file_path").and_then(|v| v.as_str()) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => data_dir.join("state"),
        };
        if state.save_interval_ms.is_some() || adapter.config.get("save_interval_ms").is_some() {
            tracing::info!("iii-state save_interval_ms is accepted and has no effect: Trine makes every write durable before acknowledging it");
        }
        let mut options = StateOptions {
            triggers_enabled: state.triggers_enabled,
            ..StateOptions::default()
        };
        if let Some(max) = args
            .state_max_value_bytes
            .or(state.max_value_bytes.map(|m| m as usize))
        {
            options.max_value_bytes = max.max(1);
        }
        if let Some(n) = args.trigger_max_attempts.or(state.trigger_max_attempts) {
            options.delivery.max_attempts = n.max(1);
        }
        if let Some(ms) = args.trigger_retry_ms.or(state.trigger_retry_ms) {
            options.delivery.initial_backoff = Duration::from_millis(ms);
        }
        Ok(StatePlan {
            store,
            redis,
            dir,
            cache_bytes: args.state_cache_mb.unwrap_or(64) << 20,
            checkpoint_bytes: args.state_checkpoint_mb.unwrap_or(64).max(1) << 20,
            options,
        })
    }

    /// Opens the store and starts the state module. With `group` (cluster mode on a Redis data
    /// set) the engine that gets the lease is the owner; the others read the data set only.
    fn start(mut self, engine: &Engine, group: bool) -> anyhow::Result<Started> {
        let mut lease = None;
        let mut role = None;
        let store: Arc<dyn Store> = match (&self.redis, self.store) {
            (Some((url, prefix, ttl)), _) => {
                // An exclusive lease, and a fence on every commit so an engine that lost the
                // lease cannot write.
                let token = std::env::var(LEASE_TOKEN_ENV).unwrap_or_else(|_| {
                    format!(
                        "{}-{}",
                        std::process::id(),
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_nanos())
                            .unwrap_or(0)
                    )
                });
                let key = format!("{prefix}:owner");
                let taken = if group {
                    OwnerLease::try_acquire(url, &key, &token, *ttl)
                } else {
                    OwnerLease::acquire(url, &key, &token, *ttl, *ttl + Duration::from_secs(2))
                        .map(Some)
                }
                .with_context(|| format!("taking the Redis data set `{prefix}` at {url}"))?;
                let g = Group {
                    owner: taken.is_some(),
                    url: url.clone(),
                    prefix: prefix.clone(),
                    ttl: *ttl,
                    token: token.clone(),
                };
                if group {
                    role = Some(g);
                }
                let Some(l) = taken else {
                    // Another engine owns the data set: this one forwards writes to it and
                    // reads the data set for stream snapshots. Its fence never holds, so it
                    // cannot write even by mistake.
                    let s = RedisStore::open(
                        url,
                        RedisStoreOptions {
                            key_prefix: prefix.clone(),
                            fence: Some(trine_store::Fence {
                                key,
                                token: format!("read-only:{token}"),
                            }),
                            ..RedisStoreOptions::default()
                        },
                    )
                    .with_context(|| format!("opening the Redis state store at {url}"))?;
                    tracing::info!(url = %url, key_prefix = %prefix,
                        "group: another engine owns the data set; this engine passes writes, queues and triggers on to it");
                    self.options.read_only = true;
                    self.options.functions = false;
                    let store: Arc<dyn Store> = Arc::new(s);
                    engine
                        .enable_state(store, self.options)
                        .context("starting the state module")?;
                    return Ok(Started {
                        durable: None,
                        lease: None,
                        group: role,
                    });
                };
                let s = RedisStore::open(
                    url,
                    RedisStoreOptions {
                        key_prefix: prefix.clone(),
                        fence: Some(l.fence()),
                        ..RedisStoreOptions::default()
                    },
                )
                .with_context(|| format!("opening the Redis state store at {url}"))?;
                tracing::info!(url = %url, key_prefix = %prefix, durable = s.info().durable,
                    "state: Redis store (this engine holds the data set's lease)");
                lease = Some(l);
                Arc::new(s)
            }
            (None, StateStore::InMemory) => {
                tracing::info!("state: in memory (nothing survives a restart)");
                Arc::new(MemoryStore::new())
            }
            (None, StateStore::FileBased) => {
                let started = std::time::Instant::now();
                let opts = FileStoreOptions {
                    cache_bytes: self.cache_bytes,
                    checkpoint_bytes: self.checkpoint_bytes,
                };
                let s = FileStore::open(&self.dir, opts).with_context(|| {
                    format!("opening the state store in {}", self.dir.display())
                })?;
                tracing::info!(path = %self.dir.display(), elapsed_ms = started.elapsed().as_millis() as u64,
                    "state: durable file store open (every acknowledged write is fsync'd)");
                Arc::new(s)
            }
        };
        // On Redis, queues and cron live in the same data set (shared by the group), whatever
        // Redis's own persistence settings.
        let durable = (store.info().durable || self.redis.is_some()).then(|| store.clone());
        engine
            .enable_state(store, self.options)
            .context("starting the state module")?;
        Ok(Started {
            durable,
            lease,
            group: role,
        })
    }
}

/// The store the state module opened, as queues see it.
struct SharedStore {
    /// The durable store state runs on (file store or Redis data set), if any.
    store: Option<Arc<dyn Store>>,
    /// `store` is a Redis data set.
    on_redis: bool,
    /// This engine is part of a group sharing that data set.
    in_group: bool,
}

/// Refuses adapters a module does not have in this build (the block's `adapter.name`).
fn check_adapter(worker: &str, block: &serde_json::Value, known: &[&str]) -> anyhow::Result<()> {
    let name = block
        .get("adapter")
        .and_then(|a| a.get("name"))
        .and_then(|n| n.as_str());
    match name {
        None => Ok(()),
        Some(n) if known.contains(&n) => Ok(()),
        Some(n) => anyhow::bail!(
            "{worker} adapter `{n}` is not available in this Trine build; use {}",
            known.join(" or ")
        ),
    }
}

/// Reads the `iii-queue` block, picks the queue store and starts the queue module. Returns the
/// store it opened when that store is durable and new.
fn start_queues(
    engine: &Engine,
    args: &ServeArgs,
    block: &serde_json::Value,
    from_file: bool,
    data_dir: &Path,
    shared: &SharedStore,
) -> anyhow::Result<Option<Arc<dyn Store>>> {
    let SharedStore {
        store: shared,
        on_redis,
        in_group,
    } = shared;
    use trine_engine::queue::config::{parse, QueueStorage};
    let parsed = parse(block)
        .map_err(|e| anyhow::anyhow!("failed to initialize worker 'iii-queue': {e}"))?;
    for w in &parsed.warnings {
        tracing::warn!("config: {w}");
    }
    let storage = match (args.queue_store, parsed.storage) {
        (Some(StateStore::InMemory), _) => QueueStorage::InMemory,
        (Some(StateStore::FileBased), _) => QueueStorage::Durable,
        (None, Some(s)) => s,
        // A group keeps its jobs in the shared data set, so a takeover loses none.
        (None, None) if *in_group => QueueStorage::Redis,
        // iii's builtin adapter defaults to in_memory; without a config file Trine is durable.
        (None, None) if from_file => QueueStorage::InMemory,
        (None, None) => QueueStorage::Durable,
    };
    let mut opened = None;
    let store: Arc<dyn Store> = match storage {
        QueueStorage::Redis => match shared {
            Some(s) if *on_redis => {
                tracing::info!("queues: in the Redis data set of the state module");
                s.clone()
            }
            _ => anyhow::bail!(
                "failed to initialize worker 'iii-queue': the redis adapter keeps jobs in the state module's Redis data set; configure iii-state with `adapter: {{name: redis}}`"
            ),
        },
        QueueStorage::InMemory => {
            tracing::info!("queues: in memory (jobs do not survive a restart)");
            Arc::new(MemoryStore::new())
        }
        QueueStorage::Durable => match shared {
            Some(s) => {
                if parsed.file_path.is_some() {
                    tracing::info!("iii-queue file_path: queue jobs live in the engine's durable store (one store per engine)");
                }
                s.clone()
            }
            None => {
                let dir = match &parsed.file_path {
                    Some(p) if !p.is_empty() => PathBuf::from(p),
                    _ => data_dir.join("queue"),
                };
                let s: Arc<dyn Store> = Arc::new(
                    FileStore::open(&dir, FileStoreOptions::default())
                        .with_context(|| format!("opening the queue store in {}", dir.display()))?,
                );
                opened = Some(s.clone());
                s
            }
        },
    };
    engine
        .enable_queues(store, parsed.options)
        .context("starting the queue module")?;
    Ok(opened)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
