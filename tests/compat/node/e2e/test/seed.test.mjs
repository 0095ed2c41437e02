// The seed app end to end (stream.md R1–R3 and check 21; http.md H1–H3 and checks 23–28): the
// example apps in examples/ run UNCHANGED as child processes against a fresh `trine serve`; a plain
// WebSocket subscribes to ws://host:port/stream/todos-live/all and plain HTTP drives the routes.
//
//   examples/todo-node-0.9.0  the seed's own API (npm iii-sdk 0.9.0) — the full check list
//   examples/todo-node-0.22.1 the same app on npm iii-sdk 0.22.1     — create, event, metrics
//   examples/todo-python      the same app on PyPI iii-sdk 0.25.0    — create, event, metrics

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { RawClient, httpRequest, startEngine, waitFor } from '../../lib/harness.mjs';
import {
  StreamClient,
  prepareNodeExample,
  preparePythonExample,
  sleep,
  startApp,
  streamUrl,
  todoChange,
} from '../lib.mjs';

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

/** Polls GET /todos/metrics until it equals `want` (state triggers are asynchronous: ≤ 2 s). */
async function expectMetrics(engine, want, timeoutMs = 2000) {
  let last;
  try {
    await waitFor(
      async () => {
        last = await httpRequest(`${engine.httpUrl}/todos/metrics`);
        return last.status === 200 && JSON.stringify(last.json) === JSON.stringify(want);
      },
      timeoutMs,
      { message: `metrics ${JSON.stringify(want)}`, interval: 25 },
    );
  } catch {
    assert.fail(`GET /todos/metrics: want ${JSON.stringify(want)} within ${timeoutMs} ms, last ${last?.status} ${last?.text}`);
  }
}

/** Checks the §3 envelope of a seed event and returns its `todo_changed` data. */
function assertSeedEnvelope(env, what) {
  const show = JSON.stringify(env);
  assert.equal(env?.type, 'stream', `${what}: envelope type (${show})`);
  assert.equal(env.streamName, 'todos-live', `${what}: streamName (${show})`);
  assert.equal(env.groupId, 'all', `${what}: groupId (${show})`);
  assert.ok(Number.isInteger(env.timestamp) && env.timestamp > 1.6e12, `${what}: integer ms timestamp (${show})`);
  assert.match(String(env.id), /^change-\d+$/, `${what}: id is the app's change-<ms> (${show})`);
  assert.equal(env.event?.type, 'event', `${what}: event.type (${show})`);
  assert.equal(env.event.event?.type, 'todo_changed', `${what}: event.event.type from event_type, R2 (${show})`);
  assert.ok(Number.isInteger(env.seq) && env.seq >= 0, `${what}: integer seq (${show})`);
  assert.equal(typeof env.epoch, 'string', `${what}: string epoch (${show})`);
  assert.ok(env.epoch.length > 0, `${what}: non-empty epoch (${show})`);
  return env.event.event.data;
}

async function postJson(engine, path, body) {
  return httpRequest(`${engine.httpUrl}${path}`, { method: 'POST', json: body });
}

/**
 * The checks every generation of the app passes: fresh metrics are `null` at once (H2), a created
 * todo is the response (H1 + H3), its `todo_changed` event reaches a path-form socket within 1 s
 * with no sync before it (R1–R3, check 21), and the metrics count it.
 */
function commonChecks(label, ctx) {
  test(`${label}: GET /todos/metrics on a fresh engine → 200 null well under 1 s (http.md 26, H2)`, async () => {
    const r = await httpRequest(`${ctx.engine.httpUrl}/todos/metrics`);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.text.trim(), 'null');
    assert.match(r.headers.get('content-type') ?? '', /application\/json/);
    assert.ok(r.ms < 1000, `answered in ${r.ms} ms`);
  });

  test(`${label}: POST /todos → the todo; its created event reaches /stream/todos-live/all within 1 s (check 21, http.md 23)`, async () => {
    ctx.sub = await StreamClient.connect(streamUrl(ctx.engine));
    const started = Date.now();
    const r = await postJson(ctx.engine, '/todos', { title: 'buy milk' });
    assert.equal(r.status, 200, r.text);
    const todo = r.json;
    assert.equal(todo.title, 'buy milk', `title read from the top level of the request (H3): ${r.text}`);
    assert.equal(todo.completed, false);
    assert.match(todo.id, /^todo-\d+$/);
    assert.match(todo.created_at, ISO);
    ctx.todo = todo;

    const [frame] = await ctx.sub.waitFrames(1, 1000 - (Date.now() - started) + 50, 'the created event');
    const elapsed = frame.at - started;
    assert.ok(elapsed <= 1000, `event arrived ${elapsed} ms after the POST started`);
    // The first frame is the event itself: path-form sockets get no sync unless ?sync=true.
    const data = assertSeedEnvelope(frame.json, 'first frame');
    assert.deepEqual(data, { action: 'created', key: todo.id, todo });
    ctx.events = [frame.json];
  });

  test(`${label}: GET /todos lists it; metrics become {total:1} (http.md 24, 26)`, async () => {
    const r = await httpRequest(`${ctx.engine.httpUrl}/todos`);
    assert.equal(r.status, 200, r.text);
    assert.ok(Array.isArray(r.json), r.text);
    assert.deepEqual(
      r.json.filter((t) => t.id === ctx.todo.id),
      [ctx.todo],
    );
    await expectMetrics(ctx.engine, { total: 1 });
  });

  test(`${label}: the Logger call in todos::on-change is kept, attributed to the function and worker`, async () => {
    const raw = await RawClient.connect(ctx.engine.workerUrl);
    try {
      const record = await waitFor(
        async () =>
          (await raw.call('engine::logs::list', { search: 'Todo changed' })).logs.find(
            (l) => l.message === 'Todo changed' && l.data?.key === ctx.todo.id,
          ),
        5000,
        { message: 'the "Todo changed" log record' },
      );
      assert.equal(record.level, 'info');
      assert.deepEqual(record.data, { key: ctx.todo.id, action: 'created' });
      assert.equal(record.function_id, 'todos::on-change');
      assert.equal(record.worker_name, 'reactive-backend');
    } finally {
      await raw.close();
    }
  });

  test(`${label}: POST /todos/toggle of a missing id → 500 "Todo nope not found" (http.md 28)`, async () => {
    const since = ctx.sub.frames.length;
    const r = await postJson(ctx.engine, '/todos/toggle', { id: 'nope' });
    assert.equal(r.status, 500, r.text);
    assert.equal(r.json?.error, 'Todo nope not found', r.text);
    assert.equal(r.json?.code, 'invocation_failed', r.text);
    await sleep(150);
    assert.deepEqual(ctx.sub.envelopes(since), [], 'a failed toggle changes nothing, so nothing is streamed');
  });
}

async function setUp(ctx, startAppFn) {
  ctx.engine = await startEngine();
  ctx.app = await startAppFn(ctx.engine);
}

async function tearDown(ctx) {
  await ctx.sub?.close();
  await ctx.app?.stop();
  await ctx.engine?.dispose();
}

// -----------------------------------------------------------------------------------------------

describe('seed app on npm iii-sdk 0.9.0 (examples/todo-node-0.9.0/app.js, unchanged)', () => {
  const ctx = {};
  before(async () => {
    const dir = prepareNodeExample('todo-node-0.9.0');
    await setUp(ctx, (engine) => startApp(engine, { cmd: process.execPath, args: ['app.js'], cwd: dir }));
  });
  after(() => tearDown(ctx));

  commonChecks('0.9.0', ctx);

  test('0.9.0: toggle → {id, completed:true}, listed completed, updated event, metrics {total:1,completed:1} (http.md 25, 26)', async () => {
    const { engine, todo } = ctx;
    const since = ctx.sub.frames.length;
    const r = await postJson(engine, '/todos/toggle', { id: todo.id });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { id: todo.id, completed: true });

    const list = await httpRequest(`${engine.httpUrl}/todos`);
    const listed = list.json.find((t) => t.id === todo.id);
    assert.equal(listed?.completed, true, list.text);

    const [frame] = (await ctx.sub.waitFrames(since + 1, 1000, 'the updated event')).slice(since);
    const data = assertSeedEnvelope(frame.json, 'updated event');
    assert.equal(data.action, 'updated');
    assert.equal(data.key, todo.id);
    assert.deepEqual(data.todo, listed);
    ctx.events.push(frame.json);
    await expectMetrics(engine, { total: 1, completed: 1 });
  });

  test('0.9.0: delete → {deleted:id}, deleted event, metrics {total:0,completed:0} (http.md 27)', async () => {
    const { engine, todo } = ctx;
    const since = ctx.sub.frames.length;
    const r = await postJson(engine, '/todos/delete', { id: todo.id });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { deleted: todo.id });

    const list = await httpRequest(`${engine.httpUrl}/todos`);
    assert.deepEqual(
      list.json.filter((t) => t.id === todo.id),
      [],
    );

    const [frame] = (await ctx.sub.waitFrames(since + 1, 1000, 'the deleted event')).slice(since);
    const data = assertSeedEnvelope(frame.json, 'deleted event');
    assert.deepEqual(data, { action: 'deleted', key: todo.id, todo: null });
    ctx.events.push(frame.json);
    await expectMetrics(engine, { total: 0, completed: 0 });
  });

  test('0.9.0: the socket got exactly created, updated, deleted — consecutive seq, one epoch', async () => {
    await sleep(200); // nothing else may trail in
    const all = ctx.sub.envelopes();
    assert.equal(all.length, 3, `frames: ${ctx.sub.describe()}`);
    assert.deepEqual(
      all.map((e) => todoChange(e)?.action),
      ['created', 'updated', 'deleted'],
    );
    assert.deepEqual(all, ctx.events);
    const [a, b, c] = all;
    assert.equal(b.seq, a.seq + 1, 'seq grows by one per event of the group');
    assert.equal(c.seq, b.seq + 1, 'seq grows by one per event of the group');
    assert.equal(new Set(all.map((e) => e.epoch)).size, 1, 'one epoch');
  });

  test('0.9.0: reconnecting with ?last_seq=N&epoch=E replays the events missed meanwhile', async () => {
    const { engine } = ctx;
    const watcher = ctx.sub; // stays connected throughout, to know when the missed event went out
    const first = await StreamClient.connect(streamUrl(engine));
    const r = await postJson(engine, '/todos', { title: 'resume me' });
    assert.equal(r.status, 200, r.text);
    const todo = r.json;
    const [created] = await first.waitFrames(1, 2000, 'the created event');
    assertSeedEnvelope(created.json, 'created event');
    const { seq, epoch } = created.json;
    await first.close();

    // Missed while disconnected.
    const since = watcher.frames.length;
    const t = await postJson(engine, '/todos/toggle', { id: todo.id });
    assert.equal(t.status, 200, t.text);
    await waitFor(
      () => watcher.envelopes(since).some((e) => todoChange(e)?.action === 'updated' && todoChange(e)?.key === todo.id),
      2000,
      { message: 'the updated event on the watching socket' },
    );

    const again = await StreamClient.connect(streamUrl(engine, 'todos-live', 'all', { last_seq: seq, epoch }));
    const [replayed] = await again.waitFrames(1, 2000, 'the replayed event');
    const data = assertSeedEnvelope(replayed.json, 'replayed event');
    assert.equal(replayed.json.seq, seq + 1, 'the replay starts right after last_seq');
    assert.equal(replayed.json.epoch, epoch);
    assert.equal(data.action, 'updated');
    assert.equal(data.key, todo.id);
    assert.equal(data.todo.completed, true);
    await sleep(150);
    assert.equal(again.frames.length, 1, `only the missed event is replayed: ${again.describe()}`);

    // Live events follow the replay on the same socket.
    await postJson(engine, '/todos/delete', { id: todo.id });
    const [, live] = await again.waitFrames(2, 2000, 'the live deleted event');
    assert.equal(live.json.seq, seq + 2);
    assert.equal(todoChange(live.json)?.action, 'deleted');
    await again.close();
    await expectMetrics(engine, { total: 0, completed: 0 });
  });

  test('0.9.0: reconnecting with an epoch the engine does not know → a sync envelope with snapshot:true', async () => {
    const sock = await StreamClient.connect(streamUrl(ctx.engine, 'todos-live', 'all', { last_seq: 3, epoch: 'not-an-epoch' }));
    const [frame] = await sock.waitFrames(1, 2000, 'the snapshot sync');
    assert.equal(frame.json?.type, 'stream', frame.text);
    assert.equal(frame.json.event?.type, 'sync', frame.text);
    assert.equal(frame.json.event.snapshot ?? frame.json.snapshot, true, frame.text);
    await sock.close();
  });
});

describe('seed app on npm iii-sdk 0.22.1 (examples/todo-node-0.22.1/app.js)', () => {
  const ctx = {};
  before(async () => {
    const dir = prepareNodeExample('todo-node-0.22.1');
    await setUp(ctx, (engine) => startApp(engine, { cmd: process.execPath, args: ['app.js'], cwd: dir }));
  });
  after(() => tearDown(ctx));
  commonChecks('0.22.1', ctx);
});

describe('seed app on PyPI iii-sdk 0.25.0 (examples/todo-python/app.py)', () => {
  const ctx = {};
  before(async () => {
    const { dir, python } = preparePythonExample('todo-python');
    await setUp(ctx, (engine) => startApp(engine, { cmd: python, args: ['app.py'], cwd: dir, timeoutMs: 60000 }));
  });
  after(() => tearDown(ctx));
  commonChecks('python', ctx);
});
