// Test harness for the Node compatibility suites: runs the `trine` binary, gives raw WebSocket and
// HTTP clients, and small waiting helpers. SDK-independent: the SDK under test is reached through
// the adapter of each project (sdk-*/test/adapter.mjs).

import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, existsSync, createWriteStream, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const NODE_COMPAT_DIR = path.resolve(here, '..');
export const REPO_ROOT = path.resolve(here, '../../../..');
export const TRINE_BIN = process.env.TRINE_BIN || path.join(REPO_ROOT, 'target/debug/trine');

// ---------------------------------------------------------------------------------------------
// `ws` is a dependency of every SDK project; this shared file lives outside them, so resolve it
// from the current project first, then from any sibling project.
function loadWs() {
  const bases = [
    path.join(process.cwd(), 'package.json'),
    path.join(NODE_COMPAT_DIR, 'sdk-0.22.1/package.json'),
    path.join(NODE_COMPAT_DIR, 'sdk-0.11.6/package.json'),
    path.join(NODE_COMPAT_DIR, 'sdk-0.9.0/package.json'),
  ];
  for (const base of bases) {
    try {
      return createRequire(base)('ws');
    } catch {
      // try the next project
    }
  }
  throw new Error('package "ws" not found: run npm ci in one of tests/compat/node/sdk-*');
}
const wsModule = loadWs();
export const WebSocket = wsModule.WebSocket ?? wsModule;

// ---------------------------------------------------------------------------------------------
// Process bookkeeping: every child we spawn is killed when the test process exits, whatever happens.
const children = new Set();
process.on('exit', () => {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});
export function trackChild(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `predicate` (sync or async) until it returns a truthy value; returns that value. */
export async function waitFor(predicate, timeoutMs = 5000, { interval = 50, message = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      const value = await predicate();
      if (value) return value;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const detail = lastError ? ` (last error: ${lastError?.stack ?? lastError})` : '';
      throw new Error(`waitFor timed out after ${timeoutMs} ms: ${message}${detail}`);
    }
    await sleep(interval);
  }
}

/** Resolves with the promise's value, or rejects after `ms` with a named timeout error. */
export function withTimeout(promise, ms, what = 'operation') {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
    }),
  ]);
}

/** Settles a promise and reports how: {ok, value} or {ok:false, error}, plus elapsed ms. */
export async function settle(promise) {
  const started = Date.now();
  try {
    const value = await promise;
    return { ok: true, value, ms: Date.now() - started };
  } catch (error) {
    return { ok: false, error, ms: Date.now() - started };
  }
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export const isUuid = (s) =>
  typeof s === 'string' && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(s);

export const uniq = (prefix = 'c') => `${prefix}${randomUUID().slice(0, 8)}`;

// ---------------------------------------------------------------------------------------------
// Engine process

let engineCounter = 0;

export class Engine {
  /**
   * `config`: the text of an iii `config.yaml`; it is written into the engine's working directory
   * and passed with `--config` (only the workers it lists run, so `http_url`/`stream_url` may be
   * null when it lists no `iii-http`/`iii-stream`).
   */
  constructor({ extraArgs = [], ports = {}, dataDir, host = '127.0.0.1', env = {}, config } = {}) {
    this.extraArgs = extraArgs;
    this.host = host;
    this.ports = { worker: ports.worker ?? 0, http: ports.http ?? 0, stream: ports.stream ?? 0 };
    this.ownsDataDir = !dataDir;
    this.dataDir = dataDir ?? mkdtempSync(path.join(os.tmpdir(), 'trine-compat-data-'));
    this.cwd = mkdtempSync(path.join(os.tmpdir(), 'trine-compat-cwd-'));
    this.env = env;
    this.configPath = undefined;
    if (config !== undefined) {
      this.configPath = path.join(this.cwd, 'config.yaml');
      writeFileSync(this.configPath, config);
    }
    this.proc = undefined;
    this.stderrChunks = [];
    this.stdoutChunks = [];
    this.logPath = path.join(os.tmpdir(), `trine-compat-${process.pid}-${++engineCounter}.log`);
  }

  args() {
    return [
      'serve',
      '--host', this.host,
      '--worker-port', String(this.ports.worker),
      '--http-port', String(this.ports.http),
      '--stream-port', String(this.ports.stream),
      '--data-dir', this.dataDir,
      ...(this.configPath ? ['--config', this.configPath] : []),
      ...this.extraArgs,
    ];
  }

  async start(readyTimeoutMs = 20000) {
    if (!existsSync(TRINE_BIN)) {
      throw new Error(`engine binary not found at ${TRINE_BIN} (set TRINE_BIN or build it)`);
    }
    const log = createWriteStream(this.logPath, { flags: 'a' });
    const proc = trackChild(
      spawn(TRINE_BIN, this.args(), {
        cwd: this.cwd,
        env: { ...process.env, RUST_BACKTRACE: '1', ...this.env },
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
    );
    this.proc = proc;
    this.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    proc.stderr.on('data', (chunk) => {
      this.stderrChunks.push(chunk);
      log.write(chunk);
      if (process.env.TRINE_COMPAT_VERBOSE) process.stderr.write(chunk);
    });
    proc.once('exit', () => log.end());
    const ready = new Promise((resolve, reject) => {
      let buffered = '';
      proc.stdout.on('data', (chunk) => {
        this.stdoutChunks.push(chunk);
        buffered += chunk.toString('utf8');
        let nl;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, nl).trim();
          buffered = buffered.slice(nl + 1);
          const m = /^trine ready (\{.*\})$/.exec(line);
          if (m) {
            try {
              resolve(JSON.parse(m[1]));
            } catch (err) {
              reject(new Error(`unparseable ready line: ${line}: ${err.message}`));
            }
          }
        }
      });
      proc.once('exit', (code, signal) =>
        reject(new Error(`engine exited before ready (code ${code}, signal ${signal}):\n${this.stderrTail()}`)),
      );
      proc.once('error', reject);
    });
    const info = await withTimeout(ready, readyTimeoutMs, 'engine ready line').catch((err) => {
      proc.kill('SIGKILL');
      throw new Error(`${err.message}\nengine stderr:\n${this.stderrTail()}`);
    });
    this.workerUrl = info.worker_url;
    this.httpUrl = info.http_url;
    this.streamUrl = info.stream_url;
    // Remember the bound ports so that a restart comes back on the same addresses (a listener the
    // config file does not enable is reported as null).
    const portOf = (url, fallback) => (url ? Number(new URL(url).port) : fallback);
    this.ports = {
      worker: portOf(info.worker_url, this.ports.worker),
      http: portOf(info.http_url, this.ports.http),
      stream: portOf(info.stream_url, this.ports.stream),
    };
    return this;
  }

  get running() {
    return this.proc !== undefined && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** SIGTERM, then SIGKILL after `graceMs`. Resolves with the exit status. */
  async stop({ graceMs = 5000 } = {}) {
    if (!this.running) return this.exited ? await this.exited : undefined;
    this.proc.kill('SIGTERM');
    const res = await withTimeout(this.exited, graceMs, 'engine SIGTERM exit').catch(async () => {
      this.proc.kill('SIGKILL');
      return { ...(await this.exited), forced: true };
    });
    return res;
  }

  async restart({ downMs = 0 } = {}) {
    await this.stop();
    if (downMs) await sleep(downMs);
    return this.start();
  }

  /** Stops the engine and removes its temporary directories. */
  async dispose() {
    await this.stop();
    rmSync(this.cwd, { recursive: true, force: true });
    if (this.ownsDataDir) rmSync(this.dataDir, { recursive: true, force: true });
  }

  stderrText() {
    return Buffer.concat(this.stderrChunks).toString('utf8');
  }

  stderrTail(bytes = 4000) {
    const text = this.stderrText();
    return text.length > bytes ? `…${text.slice(-bytes)}` : text;
  }
}

export async function startEngine(options = {}) {
  const engine = new Engine(options);
  await engine.start();
  return engine;
}

/** Runs the `trine` CLI; resolves {code, stdout, stderr}. */
export function runCli(args, { timeoutMs = 15000, env = {} } = {}) {
  return new Promise((resolve, reject) => {
    const proc = trackChild(
      spawn(TRINE_BIN, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] }),
    );
    const out = [];
    const err = [];
    proc.stdout.on('data', (c) => out.push(c));
    proc.stderr.on('data', (c) => err.push(c));
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`trine ${args.join(' ')} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    proc.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      });
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket client speaking the worker protocol by hand.

export class RawClient {
  constructor(ws) {
    this.ws = ws;
    this.frames = []; // {text?:string, json?:any, binary?:Buffer, at:number}
    this.waiters = new Set();
    this.handlers = new Map();
    this.closeInfo = undefined;
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason?.toString('utf8') ?? '' };
        resolve(this.closeInfo);
        this.notify();
      });
    });
    ws.on('error', (err) => {
      this.lastError = err;
    });
    ws.on('message', (data, isBinary) => {
      const frame = { at: Date.now() };
      if (isBinary) {
        frame.binary = Buffer.from(data);
      } else {
        frame.text = data.toString('utf8');
        try {
          frame.json = JSON.parse(frame.text);
        } catch {
          // keep the text
        }
      }
      this.frames.push(frame);
      if (frame.json?.type === 'invokefunction') this.dispatch(frame.json);
      this.notify();
    });
  }

  static connect(url, { timeoutMs = 5000, ...wsOptions } = {}) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 512 * 1024 * 1024, ...wsOptions });
      const client = new RawClient(ws);
      const timer = setTimeout(() => {
        ws.terminate();
        reject(new Error(`raw ws connect to ${url} timed out`));
      }, timeoutMs);
      ws.once('open', () => {
        clearTimeout(timer);
        resolve(client);
      });
      ws.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      ws.once('unexpected-response', (_req, res) => {
        clearTimeout(timer);
        reject(new Error(`raw ws connect to ${url}: HTTP ${res.statusCode}`));
      });
    });
  }

  get open() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  notify() {
    for (const w of [...this.waiters]) w();
  }

  /** Index to pass as `since` so that only frames received afterwards are considered. */
  mark() {
    return this.frames.length;
  }

  messages(since = 0) {
    return this.frames.slice(since).filter((f) => f.json !== undefined).map((f) => f.json);
  }

  /** First JSON message (from index `since`) matching `pred`; waits for it up to `timeoutMs`. */
  next(pred, { since = 0, timeoutMs = 5000, what = 'matching frame' } = {}) {
    return new Promise((resolve, reject) => {
      const check = () => {
        for (let i = since; i < this.frames.length; i++) {
          const j = this.frames[i].json;
          if (j !== undefined && pred(j)) {
            done();
            resolve(j);
            return true;
          }
        }
        if (this.closeInfo) {
          done();
          reject(new Error(`socket closed (${this.closeInfo.code}) while waiting for ${what}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        const seen = this.messages(since).map((m) => JSON.stringify(m).slice(0, 200));
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; received: ${seen.join(' | ')}`));
      }, timeoutMs);
      const waiter = () => check();
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(waiter);
      };
      if (!check()) this.waiters.add(waiter);
    });
  }

  /** Waits `ms` and returns every JSON message since `since` that matches `pred`. */
  async collect(pred, ms, since = this.mark()) {
    await sleep(ms);
    return this.messages(since).filter(pred);
  }

  send(message, options) {
    const data = typeof message === 'string' || Buffer.isBuffer(message) ? message : JSON.stringify(message);
    return new Promise((resolve, reject) => {
      this.ws.send(data, options ?? {}, (err) => (err ? reject(err) : resolve()));
    });
  }

  /** Sends {"type":"ping"} and waits for {"type":"pong"}. */
  async ping(timeoutMs = 3000) {
    const since = this.mark();
    await this.send({ type: 'ping' });
    return this.next((m) => m.type === 'pong', { since, timeoutMs, what: 'pong' });
  }

  /** Synchronous call; resolves the whole `invocationresult` message. */
  async invoke(functionId, data, { timeoutMs = 5000, action, omitData = false } = {}) {
    const invocation_id = randomUUID();
    const msg = { type: 'invokefunction', invocation_id, function_id: functionId };
    if (!omitData) msg.data = data;
    if (action) msg.action = action;
    const since = this.mark();
    await this.send(msg);
    return this.next((m) => m.type === 'invocationresult' && m.invocation_id === invocation_id, {
      since,
      timeoutMs,
      what: `invocationresult for ${functionId}`,
    });
  }

  /** Like invoke() but resolves `result` and throws the error body as an Error. */
  async call(functionId, data, options) {
    const res = await this.invoke(functionId, data, options);
    if (res.error) {
      const err = new Error(`${functionId} failed: ${res.error.code}: ${res.error.message}`);
      err.body = res.error;
      throw err;
    }
    return res.result;
  }

  /** Registers a function served by this raw connection. `handler(data, msg)` may be async. */
  async register(functionId, handler, extra = {}) {
    this.handlers.set(functionId, handler);
    await this.send({ type: 'registerfunction', id: functionId, ...extra });
  }

  async dispatch(msg) {
    const handler = this.handlers.get(msg.function_id);
    if (!handler) return;
    let reply;
    try {
      const result = await handler(msg.data, msg);
      reply = { type: 'invocationresult', invocation_id: msg.invocation_id, function_id: msg.function_id };
      if (result !== undefined) reply.result = result;
    } catch (err) {
      reply = {
        type: 'invocationresult',
        invocation_id: msg.invocation_id,
        function_id: msg.function_id,
        error: { code: 'invocation_failed', message: String(err?.message ?? err) },
      };
    }
    if (msg.invocation_id && this.open) this.ws.send(JSON.stringify(reply));
  }

  close(code = 1000) {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.close(code);
    }
    return this.closed;
  }

  terminate() {
    this.ws.terminate();
    return this.closed;
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/** Plain HTTP request with Node's fetch; never throws on non-2xx. */
export async function httpRequest(url, { method = 'GET', json, body, headers = {}, timeoutMs = 10000 } = {}) {
  const init = { method, headers: { ...headers }, signal: AbortSignal.timeout(timeoutMs) };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    if (!Object.keys(init.headers).some((h) => h.toLowerCase() === 'content-type')) {
      init.headers['content-type'] = 'application/json';
    }
  } else if (body !== undefined) {
    init.body = body;
  }
  const started = Date.now();
  const res = await fetch(url, init);
  const text = await res.text();
  let parsed;
  let isJson = false;
  try {
    parsed = JSON.parse(text);
    isJson = true;
  } catch {
    // not JSON
  }
  return { status: res.status, headers: res.headers, text, json: parsed, isJson, ms: Date.now() - started };
}

/** Polls an HTTP route until its status differs from 404 (route mounted) or `want` is met. */
export async function waitForRoute(url, { method = 'GET', json, timeoutMs = 5000, want } = {}) {
  const accept = want ?? ((r) => r.status !== 404);
  return waitFor(
    async () => {
      const r = await httpRequest(url, { method, json });
      return accept(r) ? r : false;
    },
    timeoutMs,
    { message: `route ${method} ${url}`, interval: 50 },
  );
}

// ---------------------------------------------------------------------------------------------
// Child-process workers (lib/worker-proc.mjs) for tests that must kill a worker abruptly.

export function spawnWorker(adapter, spec, { env = {} } = {}) {
  const script = path.join(here, 'worker-proc.mjs');
  const config = {
    gen: adapter.gen,
    sdkEntry: adapter.sdkEntry,
    loggerEntry: adapter.loggerEntry,
    ...spec,
  };
  const proc = trackChild(
    spawn(process.execPath, [script, JSON.stringify(config)], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  const worker = {
    proc,
    lines: [],
    stderr: [],
    waiters: new Set(),
    exited: new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal }))),
    waitLine(pred, timeoutMs = 5000) {
      return waitFor(() => worker.lines.find(pred), timeoutMs, { message: 'worker stdout line', interval: 10 });
    },
    kill(signal = 'SIGKILL') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return worker.exited;
    },
  };
  let buffered = '';
  proc.stdout.on('data', (chunk) => {
    buffered += chunk.toString('utf8');
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      worker.lines.push(buffered.slice(0, nl));
      buffered = buffered.slice(nl + 1);
    }
  });
  proc.stderr.on('data', (chunk) => worker.stderr.push(chunk));
  return worker;
}

// ---------------------------------------------------------------------------------------------
// Engine queries through a raw client (no SDK involved, so they work for every generation).

export async function listFunctions(raw) {
  return (await raw.call('engine::functions::list', {})).functions;
}
export async function listWorkers(raw) {
  return (await raw.call('engine::workers::list', {})).workers;
}
export async function listTriggers(raw, includeInternal = false) {
  return (await raw.call('engine::triggers::list', { include_internal: includeInternal })).triggers;
}

/**
 * Waits until `functionId` answers a call with anything but `function_not_found`. Registrations on
 * one connection are applied in order (protocol.md §1.5 step 5), so a probe function registered
 * last proves that everything the worker registered before it is in place.
 */
export function waitForCallable(raw, functionId, { data = null, timeoutMs = 8000 } = {}) {
  return waitFor(
    async () => {
      const res = await raw.invoke(functionId, data, { timeoutMs: 2000 });
      return res.error?.code === 'function_not_found' ? false : res;
    },
    timeoutMs,
    { message: `function ${functionId} callable`, interval: 50 },
  );
}

// ---------------------------------------------------------------------------------------------
// TCP proxy between an SDK and the engine, to break a link on one side only: the SDK sees its
// socket close (and reconnects) while the engine still holds the old connection open.

export class TcpProxy {
  constructor(targetPort, targetHost = '127.0.0.1') {
    this.targetPort = targetPort;
    this.targetHost = targetHost;
    this.pairs = []; // {client, upstream}
    this.server = net.createServer((client) => this.accept(client));
  }

  static async start(targetPort) {
    const proxy = new TcpProxy(targetPort);
    await new Promise((resolve, reject) => {
      proxy.server.once('error', reject);
      proxy.server.listen(0, '127.0.0.1', resolve);
    });
    proxy.port = proxy.server.address().port;
    return proxy;
  }

  get url() {
    return `ws://127.0.0.1:${this.port}`;
  }

  accept(client) {
    const upstream = net.connect(this.targetPort, this.targetHost);
    const pair = { client, upstream };
    this.pairs.push(pair);
    client.on('error', () => {});
    upstream.on('error', () => {});
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => {
      if (!pair.keepUpstream) upstream.destroy();
    });
    upstream.on('close', () => client.destroy());
  }

  /** Destroys the SDK-facing side of every current link; the engine-facing side stays open. */
  cutClients() {
    const stale = [];
    for (const pair of this.pairs) {
      pair.keepUpstream = true;
      pair.upstream.unpipe(pair.client);
      pair.client.unpipe(pair.upstream);
      pair.client.destroy();
      stale.push(pair);
    }
    this.pairs = [];
    return stale;
  }

  async close() {
    for (const pair of this.pairs) {
      pair.client.destroy();
      pair.upstream.destroy();
    }
    await new Promise((resolve) => this.server.close(resolve));
  }
}
