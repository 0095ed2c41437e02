// The seed app on a group of three engines sharing one Redis data set (docs/cluster.md), as a user
// would run it behind a load balancer: the example app (examples/todo-node-0.22.1, unchanged) runs
// twice, connected to engines 2 and 3 (replicas); HTTP requests are spread over all three engines;
// a plain WebSocket watches the seed's stream on every engine.
//
// Needs a Redis server (TRINE_TEST_REDIS_URL, default redis://127.0.0.1:6379/); the run uses a key
// prefix of its own and deletes its keys.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';

import { httpRequest, sleep, startEngine, waitFor, waitForRoute } from '../../lib/harness.mjs';
import { StreamClient, prepareNodeExample, startApp, streamUrl, todoChange } from '../lib.mjs';

const REDIS_URL = process.env.TRINE_TEST_REDIS_URL || 'redis://127.0.0.1:6379/';
const PREFIX = `trine-e2e-group-${process.pid}-${Date.now()}`;

/** One Redis command over a plain socket (RESP), enough to clean up the run's keys. */
function redis(...args) {
  const u = new URL(REDIS_URL);
  return new Promise((resolve, reject) => {
    const s = net.connect(Number(u.port || 6379), u.hostname, () => {
      s.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join('')}`);
    });
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('utf8');
      s.end();
      resolve(buf);
    });
    s.on('error', reject);
  });
}

const config = () => {
  const adapter = `{name: redis, config: {redis_url: "${REDIS_URL}", key_prefix: "${PREFIX}", lease_ttl_ms: 1500}}`;
  return [
    'workers:',
    '  - name: iii-state',
    '    config:',
    `      adapter: ${adapter}`,
    '  - name: iii-stream',
    '    config:',
    '      port: 0',
    `      adapter: ${adapter}`,
    '  - name: iii-http',
    '    config:',
    '      port: 0',
    '',
  ].join('\n');
};

const post = (engine, title) => httpRequest(`${engine.httpUrl}/todos`, { method: 'POST', json: { title } });

/** The created events an envelope list holds, as `seq:key`. */
const created = (client) =>
  client
    .envelopes()
    .filter((e) => todoChange(e)?.action === 'created')
    .map((e) => `${e.seq}:${todoChange(e).key}`);

describe('the seed app on three engines sharing one Redis', () => {
  const engines = [];
  const apps = [];
  const subs = [];
  let dir;

  before(async () => {
    dir = prepareNodeExample('todo-node-0.22.1');
    // The first engine takes the data set's lease (it owns state, streams and queues); the others
    // pass writes and trigger registrations on to it.
    for (let i = 0; i < 3; i++) {
      engines.push(await startEngine({ config: config(), extraArgs: ['--cluster-redis-url', REDIS_URL] }));
    }
    apps.push(await startApp(engines[1], { cmd: 'node', args: ['app.js'], cwd: dir }));
    apps.push(await startApp(engines[2], { cmd: 'node', args: ['app.js'], cwd: dir }));
    // Every engine serves the app's routes (announced by the engines its workers are on).
    await waitForRoute(`${engines[0].httpUrl}/todos/metrics`, { timeoutMs: 10000 });
    for (const e of engines) subs.push(await StreamClient.connect(streamUrl(e)));
  });

  after(async () => {
    for (const s of subs) await s.close().catch(() => {});
    for (const a of apps) await a.stop().catch(() => {});
    for (const e of engines) await e.dispose().catch(() => {});
    const keys = await redis('KEYS', `${PREFIX}*`).catch(() => '');
    for (const k of keys.split('\r\n').filter((l) => l.startsWith(PREFIX))) await redis('DEL', k).catch(() => {});
  });

  test('POSTs spread over the engines: each change fires the triggers once; every socket on every engine sees every event, in the same order', async () => {
    const ids = [];
    for (let i = 0; i < 30; i++) {
      const r = await post(engines[i % 3], `todo ${i}`);
      assert.equal(r.status, 200, r.text);
      ids.push(r.json.id);
      await sleep(2); // the app's ids are `todo-<ms>`
    }
    assert.equal(new Set(ids).size, 30);
    for (const [i, s] of subs.entries()) {
      await waitFor(() => created(s).length >= 30, 5000, { message: `30 created events on engine ${i + 1}` });
    }
    const seen = subs.map(created);
    // Same envelopes, same sequence numbers, same order everywhere (a client can resume on any engine).
    assert.deepEqual(seen[1], seen[0]);
    assert.deepEqual(seen[2], seen[0]);
    assert.deepEqual(new Set(seen[0].map((x) => x.split(':')[1])), new Set(ids));
    const epochs = new Set(subs.flatMap((s) => s.envelopes().map((e) => e.epoch)));
    assert.equal(epochs.size, 1, `one epoch: ${[...epochs]}`);
    const seqs = subs[0].envelopes().map((e) => e.seq);
    seqs.forEach((q, i) => i > 0 && assert.equal(q, seqs[i - 1] + 1, `consecutive seqs: ${seqs}`));
    // The metrics trigger ran exactly once per change (twice would count 60), whichever engine asks.
    for (const e of engines) {
      await waitFor(
        async () => JSON.stringify((await httpRequest(`${e.httpUrl}/todos/metrics`)).json) === '{"total":30}',
        3000,
        { message: 'metrics {total: 30}' },
      );
    }
    const list = await httpRequest(`${engines[2].httpUrl}/todos`);
    assert.equal(list.json.length, 30);
  });

  test('kill -9 of an engine: its socket resumes on another engine without a gap', async () => {
    const victim = engines[2];
    const sub = subs[2];
    const last = sub.envelopes().at(-1);
    await victim.proc.kill('SIGKILL');
    await victim.exited;
    await waitFor(() => sub.closeInfo !== undefined, 5000, { message: 'the socket to drop' });
    // Writes go on through the other engines (the replica on engine 2 serves the app).
    const ids = [];
    for (let i = 0; i < 10; i++) {
      const r = await post(engines[i % 2], `after ${i}`);
      assert.equal(r.status, 200, r.text);
      ids.push(r.json.id);
      await sleep(2);
    }
    // The client comes back on engine 2 from where it was: the missed events, no snapshot.
    const again = await StreamClient.connect(streamUrl(engines[1], 'todos-live', 'all', { last_seq: last.seq, epoch: last.epoch }));
    subs[2] = again;
    await waitFor(() => created(again).length >= 10, 5000, { message: 'the missed events' });
    const envs = again.envelopes();
    assert.ok(envs.every((e) => todoChange(e)), `only events, no sync: ${again.describe()}`);
    assert.equal(envs[0].seq, last.seq + 1, 'resumed right after the last seen event');
    assert.deepEqual(new Set(created(again).map((x) => x.split(':')[1])), new Set(ids));
    await waitFor(
      async () => JSON.stringify((await httpRequest(`${engines[0].httpUrl}/todos/metrics`)).json) === '{"total":40}',
      3000,
      { message: 'metrics {total: 40}' },
    );
  });

  test('kill -9 of the owner: the other engine takes the data set over and the app goes on', async () => {
    await engines[0].proc.kill('SIGKILL');
    await engines[0].exited;
    const survivor = engines[1];
    // The survivor takes the lease once it expires (1.5 s) and restarts as the owner, on the same
    // ports; the app's SDK reconnects by itself.
    let todo;
    await waitFor(
      async () => {
        const r = await post(survivor, 'after the takeover').catch(() => undefined);
        if (r?.status === 200) todo = r.json;
        return todo !== undefined;
      },
      20000,
      { message: 'a POST to succeed after the takeover', interval: 200 },
    );
    const list = await httpRequest(`${survivor.httpUrl}/todos`);
    assert.equal(list.status, 200, list.text);
    assert.ok(list.json.some((t) => t.id === todo.id));
    assert.equal(list.json.length, 41, 'every acknowledged todo is in the data set');
    // Its change went through the triggers (at least once: a delivery owed by the dead owner
    // may run again).
    await waitFor(
      async () => ((await httpRequest(`${survivor.httpUrl}/todos/metrics`)).json?.total ?? 0) >= 41,
      5000,
      { message: 'metrics to count the new todo' },
    );
  });
});
