// The live page (examples/todo-web/index.html) in a real headless Chromium, against `trine serve`
// and the seed app (examples/todo-node-0.9.0, unchanged): the page lists the todos from
// GET /todos, then follows ws://…/stream/todos-live/all; a todo POSTed from outside shows up within
// 1 s; after its socket is broken the page resumes with ?last_seq=N&epoch=E and catches up on what
// it missed without reloading the list.
//
// Needs /usr/bin/chromium (or TRINE_CHROMIUM). Without it the tests are skipped, unless
// TRINE_REQUIRE_BROWSER is set (CI), in which case they fail.

import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';

import { httpRequest, startEngine, waitFor } from '../../lib/harness.mjs';
import { EXAMPLES_DIR, Relay, StreamClient, prepareNodeExample, startApp, streamUrl, todoChange } from '../lib.mjs';

const CHROMIUM = process.env.TRINE_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const WEB_DIR = path.join(EXAMPLES_DIR, 'todo-web');

let skip = false;
if (!existsSync(CHROMIUM)) {
  if (process.env.TRINE_REQUIRE_BROWSER) {
    throw new Error(`TRINE_REQUIRE_BROWSER is set but ${CHROMIUM} does not exist (apt-get install -y chromium)`);
  }
  skip = `browser tests skipped: ${CHROMIUM} not found (apt-get install -y chromium; set TRINE_REQUIRE_BROWSER=1 to make this an error)`;
  console.log(`# ${skip}`);
}

/** Serves examples/todo-web/ over plain HTTP, as any static file server would. */
function startStaticServer() {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const name = url.pathname === '/' ? 'index.html' : decodeURIComponent(url.pathname.slice(1));
    const file = path.join(WEB_DIR, name);
    if (!file.startsWith(WEB_DIR + path.sep) || !existsSync(file)) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': file.endsWith('.html') ? 'text/html; charset=utf-8' : 'application/octet-stream' });
    res.end(readFileSync(file));
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${server.address().port}` }));
  });
}

async function postJson(engine, p, body) {
  const r = await httpRequest(`${engine.httpUrl}${p}`, { method: 'POST', json: body });
  assert.equal(r.status, 200, `POST ${p}: ${r.status} ${r.text}`);
  return r.json;
}

describe('examples/todo-web/index.html in headless Chromium', { skip }, () => {
  const ctx = {};

  before(async () => {
    const { chromium } = await import('playwright-core');
    const dir = prepareNodeExample('todo-node-0.9.0');
    ctx.engine = await startEngine();
    ctx.app = await startApp(ctx.engine, { cmd: process.execPath, args: ['app.js'], cwd: dir });
    ctx.relay = await Relay.start(Number(new URL(ctx.engine.streamUrl).port));
    ctx.web = await startStaticServer();
    ctx.profile = mkdtempSync(path.join(os.tmpdir(), 'trine-chromium-'));
    ctx.browser = await chromium.launchPersistentContext(ctx.profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 60000,
    });
    ctx.logs = [];
  });

  after(async () => {
    await ctx.browser?.close().catch(() => {});
    if (ctx.profile) rmSync(ctx.profile, { recursive: true, force: true });
    ctx.web?.server.close();
    await ctx.relay?.close();
    await ctx.app?.stop();
    await ctx.engine?.dispose();
  });

  /** Opens the page; records its console, its WebSocket URLs and its GET /todos requests. */
  async function open(url) {
    const page = await ctx.browser.newPage();
    const seen = { sockets: [], listFetches: 0 };
    page.on('console', (m) => ctx.logs.push(`[console.${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => ctx.logs.push(`[pageerror] ${e.message}`));
    page.on('websocket', (ws) => seen.sockets.push(ws.url()));
    page.on('request', (req) => {
      if (req.method() === 'GET' && new URL(req.url()).pathname === '/todos') seen.listFetches += 1;
    });
    await page.goto(url);
    return { page, seen };
  }

  const diag = () => `\npage log:\n${ctx.logs.join('\n')}\nengine stderr:\n${ctx.engine.stderrTail(2000)}`;

  async function waitLive(page) {
    await page.waitForSelector('#status[data-state="live"]', { timeout: 10000 }).catch((err) => {
      throw new Error(`${err.message}${diag()}`);
    });
  }

  test('served over HTTP: shows the list, then a POSTed todo within 1 s; toggles, deletes and the form work', async () => {
    const { engine } = ctx;
    const existing = await postJson(engine, '/todos', { title: 'there before the page' });

    const pageUrl = new URL(`${ctx.web.url}/index.html`);
    pageUrl.searchParams.set('ws', `ws://127.0.0.1:${ctx.relay.port}/stream/todos-live/all`);
    pageUrl.searchParams.set('api', engine.httpUrl);
    const { page, seen } = await open(pageUrl.toString());
    ctx.page = page;
    ctx.seen = seen;
    await waitLive(page);
    await page.waitForSelector(`li[data-key="${existing.id}"]`, { timeout: 5000 });
    assert.equal(await page.textContent(`li[data-key="${existing.id}"] .title`), 'there before the page');
    assert.equal(seen.listFetches, 1, 'the list is fetched once on load');

    const started = Date.now();
    const todo = await postJson(engine, '/todos', { title: 'live from the test' });
    await page.waitForSelector(`li[data-key="${todo.id}"]`, { timeout: 1000 }).catch((err) => {
      throw new Error(`the POSTed todo did not show within 1 s: ${err.message}${diag()}`);
    });
    const elapsed = Date.now() - started;
    assert.ok(elapsed <= 1000, `shown ${elapsed} ms after the POST started`);
    assert.equal(await page.textContent(`li[data-key="${todo.id}"] .title`), 'live from the test');
    ctx.todo = todo;

    await postJson(engine, '/todos/toggle', { id: todo.id });
    await page.waitForSelector(`li[data-key="${todo.id}"][data-completed="true"]`, { timeout: 2000 });

    await postJson(engine, '/todos/delete', { id: existing.id });
    await page.waitForSelector(`li[data-key="${existing.id}"]`, { state: 'detached', timeout: 2000 });

    // The page's own form: a cross-origin JSON POST to the HTTP port (CORS preflight included).
    await page.fill('#title', 'typed in the page');
    await page.press('#title', 'Enter');
    const typed = await page.waitForSelector('li:has-text("typed in the page")', { timeout: 3000 }).catch((err) => {
      throw new Error(`${err.message}${diag()}`);
    });
    const typedKey = await typed.getAttribute('data-key');
    const list = await httpRequest(`${engine.httpUrl}/todos`);
    assert.ok(
      list.json.some((t) => t.id === typedKey && t.title === 'typed in the page'),
      `the page created the todo through POST /todos: ${list.text}`,
    );
    assert.equal(seen.listFetches, 1, 'everything after the load came over the stream socket');
  });

  test('after a dropped socket the page resumes with last_seq/epoch and catches up without reloading the list', async (t) => {
    const { engine, page, seen, todo } = ctx;
    if (!page) t.skip('the first test did not open the page');
    const watcher = await StreamClient.connect(streamUrl(engine));
    try {
      const socketsBefore = seen.sockets.length;
      ctx.relay.cut(); // the page's socket breaks; reconnects are refused until resume()
      await page.waitForSelector('#status[data-state="reconnecting"]', { timeout: 5000 });

      // Changes made while the page is offline: the watcher proves they were streamed meanwhile.
      const fresh = await postJson(engine, '/todos', { title: 'made while offline' });
      await postJson(engine, '/todos/toggle', { id: todo.id }); // completed: true → false
      await waitFor(
        () =>
          watcher.envelopes().some((e) => todoChange(e)?.key === fresh.id) &&
          watcher.envelopes().some((e) => todoChange(e)?.key === todo.id && todoChange(e)?.action === 'updated'),
        3000,
        { message: 'both offline changes streamed' },
      );

      ctx.relay.resume();
      await waitLive(page);
      await page.waitForSelector(`li[data-key="${fresh.id}"]`, { timeout: 3000 }).catch((err) => {
        throw new Error(`missed todo not caught up: ${err.message}\nsockets: ${seen.sockets.join(' , ')}${diag()}`);
      });
      await page.waitForSelector(`li[data-key="${todo.id}"][data-completed="false"]`, { timeout: 3000 });

      const resumed = seen.sockets.slice(socketsBefore);
      assert.ok(resumed.length >= 1, 'the page reconnected');
      const last = new URL(resumed[resumed.length - 1]);
      assert.match(last.searchParams.get('last_seq') ?? '', /^\d+$/, `reconnect URL ${last} carries last_seq`);
      assert.ok(last.searchParams.get('epoch'), `reconnect URL ${last} carries epoch`);
      assert.equal(seen.listFetches, 1, 'caught up from the replay, not by reloading the list');
    } finally {
      await watcher.close();
    }
  });

  test('opened as a file:// URL with ?ws= and ?api=: lists and follows the todos too', async () => {
    const { engine } = ctx;
    const fileUrl = pathToFileURL(path.join(WEB_DIR, 'index.html'));
    fileUrl.searchParams.set('ws', streamUrl(engine));
    fileUrl.searchParams.set('api', engine.httpUrl);
    const { page } = await open(fileUrl.toString());
    try {
      await waitLive(page);
      await page.waitForSelector(`li[data-key="${ctx.todo.id}"]`, { timeout: 5000 }).catch((err) => {
        throw new Error(`${err.message}${diag()}`);
      });
      const started = Date.now();
      const todo = await postJson(engine, '/todos', { title: 'seen from file://' });
      await page.waitForSelector(`li[data-key="${todo.id}"]`, { timeout: 1000 });
      assert.ok(Date.now() - started <= 1000);
    } finally {
      await page.close();
    }
  });
});
