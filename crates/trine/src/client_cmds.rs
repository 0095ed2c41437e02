//! `trine call` and `trine logs`: small clients of a running engine, built on `trine-sdk`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use trine_sdk::{Error, Worker, WorkerOptions};

use crate::cli::{CallArgs, LogsArgs, QueueArgs, QueueCommand};

async fn connect(url: &str, name: &str) -> anyhow::Result<Worker> {
    Worker::connect(
        url,
        WorkerOptions {
            name: Some(name.into()),
            connect_timeout: Duration::from_secs(5),
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("connecting to {url}"))
}

pub async fn call(args: CallArgs) -> anyhow::Result<ExitCode> {
    let payload: Value = match &args.data {
        None => Value::Null,
        Some(text) => serde_json::from_str(text).context("--data is not valid JSON")?,
    };
    let worker = connect(&args.url, "trine-cli").await?;
    let outcome = worker
        .call_with_timeout(
            &args.function_id,
            payload,
            Duration::from_millis(args.timeout_ms),
        )
        .await;
    worker.shutdown().await;
    match outcome {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::Remote(body)) => {
            eprintln!("{}", serde_json::to_string(&body)?);
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!(
                "{}",
                json!({"code": "client_error", "message": e.to_string()})
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn print_record(r: &Value, as_json: bool) {
    if as_json {
        println!("{r}");
        return;
    }
    let nanos = r["time_unix_nano"].as_u64().unwrap_or(0);
    let secs = nanos / 1_000_000_000;
    let millis = (nanos / 1_000_000) % 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let level = r["level"].as_str().unwrap_or("info").to_uppercase();
    let who = r["worker_name"].as_str().unwrap_or("-");
    let function = r["function_id"].as_str().unwrap_or("-");
    let data = match &r["data"] {
        Value::Null => String::new(),
        d => format!(" {d}"),
    };
    println!(
        "{h:02}:{m:02}:{s:02}.{millis:03}Z {level:<5} [{who} {function}] {}{data}",
        r["message"].as_str().unwrap_or("")
    );
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let worker = connect(&args.url, "trine-logs").await?;
    let mut query = json!({
        "level": args.level,
        "function_id": args.function,
        "worker": args.worker,
        "search": args.search,
        "limit": args.limit,
    });
    loop {
        let answer = match worker.call("engine::logs::list", query.clone()).await {
            Ok(a) => a,
            Err(Error::Remote(body)) => {
                eprintln!("{}", serde_json::to_string(&body)?);
                worker.shutdown().await;
                return Ok(ExitCode::FAILURE);
            }
            Err(e) => return Err(e).context("querying logs"),
        };
        for r in answer["logs"].as_array().into_iter().flatten() {
            print_record(r, args.json);
        }
        if !args.follow {
            break;
        }
        query["after_seq"] = answer["next_seq"].clone();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    worker.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// `trine queue ...`: calls the queue management functions and prints the answer.
pub async fn queue(args: QueueArgs) -> anyhow::Result<ExitCode> {
    let (function, payload) = match &args.command {
        QueueCommand::Ls => ("engine::queue::list", json!({})),
        QueueCommand::Status { queue, message_id } => (
            "iii::queue::status",
            json!({"queue": queue, "message_id": message_id}),
        ),
        QueueCommand::Dlq {
            queue,
            limit,
            offset,
        } => (
            "engine::queue::dlq_messages",
            json!({"topic": queue, "limit": limit, "offset": offset}),
        ),
        QueueCommand::Redrive {
            queue,
            message_id: None,
        } => ("iii::queue::redrive", json!({"queue": queue})),
        QueueCommand::Redrive {
            queue,
            message_id: Some(id),
        } => (
            "iii::queue::redrive_message",
            json!({"queue": queue, "message_id": id}),
        ),
        QueueCommand::Discard { queue, message_id } => (
            "iii::queue::discard_message",
            json!({"queue": queue, "message_id": message_id}),
        ),
    };
    let worker = connect(&args.url, "trine-cli").await?;
    let outcome = worker.call(function, payload).await;
    worker.shutdown().await;
    let value = match outcome {
        Ok(v) => v,
        Err(Error::Remote(body)) => {
            eprintln!("error {}: {}", body.code, body.message);
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    match &args.command {
        QueueCommand::Ls => print_queues(&value),
        QueueCommand::Status { .. } => print_status(&value),
        QueueCommand::Dlq { .. } => print_dead_letters(&value),
        QueueCommand::Redrive { queue, .. } => {
            println!(
                "{} job(s) of {queue} moved back to the queue",
                value["redriven"]
            );
        }
        QueueCommand::Discard { queue, .. } => {
            println!(
                "{} dead-lettered job(s) of {queue} discarded",
                value["redriven"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_queues(list: &Value) {
    let rows = list.as_array().cloned().unwrap_or_default();
    println!(
        "{:<28} {:<6} {:<9} {:>5} {:>9} {:>8} {:>9} {:>11} {:>6}",
        "NAME", "KIND", "TYPE", "CONC", "WAITING", "DELAYED", "IN_FLIGHT", "NO_HANDLER", "DLQ"
    );
    for q in &rows {
        println!(
            "{:<28} {:<6} {:<9} {:>5} {:>9} {:>8} {:>9} {:>11} {:>6}",
            num(&q["name"]),
            num(&q["kind"]),
            num(&q["type"]),
            num(&q["concurrency"]),
            num(&q["waiting"]),
            num(&q["delayed"]),
            num(&q["in_flight"]),
            num(&q["waiting_for_handler"]),
            num(&q["dlq_count"]),
        );
    }
    if rows.is_empty() {
        println!("(no queues)");
    }
}

fn print_status(s: &Value) {
    for key in [
        "queue",
        "kind",
        "type",
        "concurrency",
        "max_retries",
        "waiting",
        "delayed",
        "in_flight",
        "waiting_for_handler",
        "dlq_count",
        "enqueued",
        "delivered",
        "failed_attempts",
        "dead_lettered",
        "durable",
    ] {
        println!("{key:<20} {}", num(&s[key]));
    }
    if let Some(m) = s.get("message") {
        println!("message              {m}");
    }
}

fn print_dead_letters(list: &Value) {
    let rows = list.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("(no dead-lettered jobs)");
        return;
    }
    for m in &rows {
        println!(
            "{}  failed_at={}  attempts={}  function={}  receipt={}",
            num(&m["id"]),
            num(&m["failed_at"]),
            num(&m["retries"]),
            num(&m["function_id"]),
            num(&m["message_id"]),
        );
        println!("    error: {} {}", num(&m["error_code"]), num(&m["error"]));
        println!("    payload: {}", m["payload"]);
    }
}
