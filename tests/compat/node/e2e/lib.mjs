// Helpers of the end-to-end tests: install and run the example apps (examples/todo-*) exactly as a
// user would, subscribe to the seed's stream with a plain WebSocket, and break a socket on purpose.

import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync, statSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

import { REPO_ROOT, sleep, trackChild, waitFor, withTimeout, httpRequest } from '../lib/harness.mjs';

export const E2E_DIR = path.dirname(fileURLToPath(import.meta.url));
export const EXAMPLES_DIR = path.join(REPO_ROOT, 'examples');

// ---------------------------------------------------------------------------------------------
// Installing the examples (pinned: npm ci from the committed lock, pip from requirements.txt).

const sha256 = (file) => createHash('sha256').update(readFileSync(file)).digest('hex');

/** Runs `fn` while holding a directory lock, so that concurrent test files install only once. */
function withInstallLock(dir, fn) {
  const lock = path.join(dir, '.trine-install.lock');
  const deadline = Date.now() + 10 * 60 * 1000;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch (err) {
      if (err.code !== 'EEXIST') throw err;
      // A lock older than 10 minutes is left over from a killed run.
      try {
        if (Date.now() - statSync(lock).mtimeMs > 10 * 60 * 1000) rmSync(lock, { recursive: true, force: true });
      } catch {
        // gone meanwhile
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for the install lock ${lock}`);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
    }
  }
  try {
    return fn();
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

function run(cmd, args, cwd, what) {
  const res = spawnSync(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', timeout: 10 * 60 * 1000 });
  if (res.status !== 0) {
    throw new Error(`${what} failed (exit ${res.status ?? res.signal}):\n${res.stdout}\n${res.stderr}`);
  }
}

/** `npm ci` in an example directory when node_modules is missing or the lock file changed. */
export function prepareNodeExample(name) {
  const dir = path.join(EXAMPLES_DIR, name);
  const lockFile = path.join(dir, 'package-lock.json');
  const stamp = path.join(dir, 'node_modules', '.trine-lock-sha256');
  const want = sha256(lockFile);
  const current = () => (existsSync(stamp) ? readFileSync(stamp, 'utf8').trim() : '');
  if (current() === want) return dir;
  withInstallLock(dir, () => {
    if (current() === want) return;
    run('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'], dir, `npm ci in examples/${name}`);
    writeFileSync(stamp, `${want}\n`);
  });
  return dir;
}

/** A virtualenv in examples/todo-python/.venv with requirements.txt installed; returns its python. */
export function preparePythonExample(name = 'todo-python') {
  const dir = path.join(EXAMPLES_DIR, name);
  const venv = path.join(dir, '.venv');
  const python = path.join(venv, 'bin', 'python');
  const stamp = path.join(venv, '.trine-requirements-sha256');
  const want = sha256(path.join(dir, 'requirements.txt'));
  const current = () => (existsSync(stamp) ? readFileSync(stamp, 'utf8').trim() : '');
  if (current() === want && existsSync(python)) return { dir, python };
  withInstallLock(dir, () => {
    if (current() === want && existsSync(python)) return;
    if (!existsSync(python)) run(process.env.PYTHON || 'python3', ['-m', 'venv', venv], dir, 'python3 -m venv');
    run(
      python,
      ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '-r', 'requirements.txt'],
      dir,
      `pip install -r examples/${name}/requirements.txt`,
    );
    writeFileSync(stamp, `${want}\n`);
  });
  return { dir, python };
}

// ---------------------------------------------------------------------------------------------
// Running an example app against an engine

/**
 * Starts an example app as a child process pointed at `engine` (III_URL / III_ENGINE_URL), and
 * waits until its last HTTP route (GET /todos/metrics) is mounted: the app registers it last, and
 * one connection's registrations are applied in order, so everything else is in place by then.
 */
export async function startApp(engine, { cmd, args, cwd, timeoutMs = 30000 }) {
  const env = { ...process.env, III_URL: engine.workerUrl, III_ENGINE_URL: engine.workerUrl };
  delete env.OTEL_ENABLED;
  const proc = trackChild(spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] }));
  const output = [];
  proc.stdout.on('data', (c) => output.push(c));
  proc.stderr.on('data', (c) => output.push(c));
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const app = {
    proc,
    output: () => Buffer.concat(output).toString('utf8'),
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        await withTimeout(exited, 5000, 'app exit').catch(() => proc.kill('SIGKILL'));
      }
      await exited;
    },
  };
  let died;
  exited.then((s) => {
    died = s;
  });
  await waitFor(
    async () => {
      if (died) throw new Error(`app exited (${JSON.stringify(died)}):\n${app.output()}`);
      const r = await httpRequest(`${engine.httpUrl}/todos/metrics`, { timeoutMs: 2000 });
      return r.status !== 404;
    },
    timeoutMs,
    { message: `${path.basename(cwd)}: GET /todos/metrics mounted`, interval: 100 },
  ).catch((err) => {
    throw new Error(`${err.message}\napp output:\n${app.output()}\nengine stderr:\n${engine.stderrTail()}`);
  });
  return app;
}

// ---------------------------------------------------------------------------------------------
// A plain WebSocket subscriber of ws://host:port/stream/{stream}/{group}

export function streamUrl(engine, streamName = 'todos-live', groupId = 'all', query = {}) {
  const u = new URL(engine.streamUrl);
  u.pathname = `/stream/${encodeURIComponent(streamName)}/${encodeURIComponent(groupId)}`;
  for (const [k, v] of Object.entries(query)) u.searchParams.set(k, String(v));
  return u.toString();
}

export class StreamClient {
  constructor(ws, url) {
    this.ws = ws;
    this.url = url;
    this.frames = []; // {at, text, json}
    this.waiters = new Set();
    this.closeInfo = undefined;
    ws.on('message', (data, isBinary) => {
      const text = isBinary ? `<binary ${data.length} bytes>` : data.toString('utf8');
      let json;
      try {
        json = JSON.parse(text);
      } catch {
        // kept as text
      }
      this.frames.push({ at: Date.now(), text, json, binary: isBinary });
      this.notify();
    });
    ws.on('close', (code, reason) => {
      this.closeInfo = { code, reason: reason.toString('utf8') };
      this.notify();
    });
    ws.on('error', () => {});
  }

  static connect(url, { timeoutMs = 5000 } = {}) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false });
      const client = new StreamClient(ws, url);
      const timer = setTimeout(() => {
        ws.terminate();
        reject(new Error(`stream socket ${url}: no open within ${timeoutMs} ms`));
      }, timeoutMs);
      ws.once('open', () => {
        clearTimeout(timer);
        client.openedAt = Date.now();
        resolve(client);
      });
      ws.once('unexpected-response', (_req, res) => {
        clearTimeout(timer);
        let body = '';
        res.on('data', (c) => {
          body += c;
        });
        res.on('end', () => reject(new Error(`stream socket ${url}: HTTP ${res.statusCode} ${body.slice(0, 200)}`)));
      });
      ws.once('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`stream socket ${url}: ${err.message}`));
      });
    });
  }

  notify() {
    for (const w of [...this.waiters]) w();
  }

  /** The JSON envelopes received so far (from index `since`). */
  envelopes(since = 0) {
    return this.frames.slice(since).map((f) => f.json);
  }

  /** Waits until at least `count` frames have arrived; resolves the first `count` of them. */
  waitFrames(count, timeoutMs = 5000, what = `${count} frame(s)`) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.frames.length >= count) {
          done();
          resolve(this.frames.slice(0, count));
          return true;
        }
        if (this.closeInfo) {
          done();
          reject(new Error(`stream socket closed (${this.closeInfo.code}) while waiting for ${what}; got ${this.describe()}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; got ${this.describe()}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      if (!check()) this.waiters.add(check);
    });
  }

  describe() {
    if (this.frames.length === 0) return 'no frames';
    return this.frames.map((f) => f.text.slice(0, 400)).join(' | ');
  }

  close() {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(1000);
    return new Promise((resolve) => {
      if (this.closeInfo) resolve();
      else this.ws.once('close', () => resolve());
    });
  }
}

/** The `todo_changed` payload of an envelope, or undefined. */
export const todoChange = (env) =>
  env?.type === 'stream' && env.event?.type === 'event' && env.event.event?.type === 'todo_changed'
    ? env.event.event.data
    : undefined;

// ---------------------------------------------------------------------------------------------
// A TCP relay in front of the stream port that can drop its clients and refuse new ones, so that a
// browser's socket can be broken while the engine keeps running.

export class Relay {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.accepting = true;
    this.pairs = new Set();
    this.server = net.createServer((client) => this.accept(client));
  }

  static async start(targetPort) {
    const relay = new Relay(targetPort);
    await new Promise((resolve, reject) => {
      relay.server.once('error', reject);
      relay.server.listen(0, '127.0.0.1', resolve);
    });
    relay.port = relay.server.address().port;
    return relay;
  }

  accept(client) {
    client.on('error', () => {});
    if (!this.accepting) {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.targetPort, '127.0.0.1');
    upstream.on('error', () => {});
    const pair = { client, upstream };
    this.pairs.add(pair);
    client.pipe(upstream);
    upstream.pipe(client);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on('close', drop);
    upstream.on('close', drop);
  }

  /** Breaks every relayed connection (both sides) and refuses new ones until resume(). */
  cut() {
    this.accepting = false;
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  resume() {
    this.accepting = true;
  }

  async close() {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

export { sleep };
