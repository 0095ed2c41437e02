// Protocol-level behaviour with a raw WebSocket client on the worker port (SDK-independent; the
// SDK worker in this file is the bystander that must stay unaffected).
// protocol.md §1.3, §1.4, §1.5, §2, §3.2, §3.7, §3.8, §7, §11 1–5, 10, 13.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import * as a from '../adapter.mjs';
import {
  RawClient,
  WebSocket,
  isUuid,
  listFunctions,
  listWorkers,
  sleep,
  startEngine,
  uniq,
  waitFor,
  withTimeout,
} from '../../lib/harness.mjs';
import { Recorder, Workers, ready } from '../../lib/common.mjs';

const MAX_MESSAGE_BYTES = 1048576;

describe('bad input on the worker socket', () => {
  let engine;
  let watcher; // raw client used for engine queries
  let workers;
  let sdkWorker;
  let sdkWorkerId;
  const p = uniq('bystander');
  const bad = [];

  before(async () => {
    engine = await startEngine({ extraArgs: ['--max-message-bytes', String(MAX_MESSAGE_BYTES)] });
    watcher = await RawClient.connect(engine.workerUrl);
    workers = new Workers(a);
    sdkWorker = workers.connect(engine.workerUrl, { name: `${p}-sdk` });
    a.fn(sdkWorker, `${p}::ok`, async (x) => ({ ok: x }));
    await ready(a, sdkWorker, watcher);
    sdkWorkerId = sdkWorker.workerId;
  });

  after(async () => {
    for (const c of bad) c.terminate();
    await workers?.shutdownAll();
    await watcher?.close();
    await engine?.dispose();
  });

  async function badClient() {
    const c = await RawClient.connect(engine.workerUrl);
    bad.push(c);
    await c.next((m) => m.type === 'workerregistered', { what: 'workerregistered' });
    return c;
  }

  /** The SDK-driven worker is unaffected: same connection, can call and be called. */
  let bystanderCalls = 0;
  async function assertBystanderFine() {
    const n = ++bystanderCalls;
    assert.deepEqual(await sdkWorker.trigger({ function_id: 'engine::echo', payload: { n }, timeoutMs: 3000 }), { n });
    assert.deepEqual(await watcher.call(`${p}::ok`, n), { ok: n });
    assert.equal(sdkWorker.workerId, sdkWorkerId, 'SDK worker kept its connection');
  }

  /** Resolves {closed} when the engine closes the socket, or {frame} for the first matching frame. */
  function closeOrFrame(c, pred, since) {
    const closed = c.closed.then((info) => ({ closed: info }));
    const frame = c.next(pred, { since, timeoutMs: 5000, what: 'close or error frame' }).then(
      (m) => ({ frame: m }),
      () => closed,
    );
    return withTimeout(Promise.race([closed, frame]), 6000, 'close or error frame');
  }

  /** Sends `frame`, expects an error frame with `code`, then a pong on the same connection. */
  async function expectErrorFrame(c, frame, code, sendOptions) {
    const since = c.mark();
    await c.send(frame, sendOptions);
    const err = await c.next((m) => m.type === 'error', { since, timeoutMs: 3000, what: `error frame ${code}` });
    assert.equal(err.error?.code, code, `error frame: ${JSON.stringify(err)}`);
    assert.equal(typeof err.error?.message, 'string');
    assert.ok(err.error.message.length > 0);
    await c.ping();
    assert.ok(c.open, 'connection stays up');
    return err;
  }

  test('first frame is workerregistered with UUID worker_id and reattach_token (§1.5, §2.11)', async () => {
    const c = await RawClient.connect(engine.workerUrl);
    bad.push(c);
    const first = await c.next(() => true, { what: 'first frame' });
    assert.equal(first.type, 'workerregistered');
    assert.ok(isUuid(first.worker_id), `worker_id ${first.worker_id}`);
    assert.ok(isUuid(first.reattach_token), `reattach_token ${first.reattach_token}`);
    assert.equal(first.features, undefined, 'no features without the observe extension');
    assert.deepEqual(await c.ping(), { type: 'pong' });
  });

  test('engine::echo returns floating-point numbers bit-exactly', async () => {
    const values = [0.9487042761550113, 0.11253879446944715, 0.053161289971765724];
    for (let i = 0; i < 300; i++) values.push(Math.random());
    const echoed = await watcher.call('engine::echo', values);
    assert.deepEqual(values.filter((v, i) => echoed[i] !== v), [], 'values changed by the engine');
  });

  test('ping with extra fields gets a pong; pong is ignored (§2.14)', async () => {
    const c = await badClient();
    const since = c.mark();
    await c.send({ type: 'pong' });
    await c.send({ type: 'ping', extra: 1 });
    await c.next((m) => m.type === 'pong', { since });
    const errors = await c.collect((m) => m.type === 'error', 200, since);
    assert.deepEqual(errors, []);
  });

  test('non-JSON text frame → invalid_message, connection stays up', async () => {
    const c = await badClient();
    await expectErrorFrame(c, 'this is not json {', 'invalid_message');
    await assertBystanderFine();
  });

  test('JSON that is not an object, or lacks type → invalid_message', async () => {
    const c = await badClient();
    await expectErrorFrame(c, '{"no_type":1}', 'invalid_message');
    await expectErrorFrame(c, '[1,2,3]', 'invalid_message');
    await expectErrorFrame(c, '42', 'invalid_message');
    await expectErrorFrame(c, 'null', 'invalid_message');
    await expectErrorFrame(c, '{"type":7}', 'invalid_message');
    await assertBystanderFine();
  });

  test('unknown type (also wrong case) → unknown_message_type (§1.3)', async () => {
    const c = await badClient();
    await expectErrorFrame(c, { type: 'nosuch' }, 'unknown_message_type');
    await expectErrorFrame(c, { type: 'RegisterFunction', id: 'x::y' }, 'unknown_message_type');
    await assertBystanderFine();
  });

  test('registerfunction with a numeric id → invalid_message; nothing registered', async () => {
    const c = await badClient();
    await expectErrorFrame(c, { type: 'registerfunction', id: 123 }, 'invalid_message');
    await expectErrorFrame(c, { type: 'registertrigger', id: randomUUID(), trigger_type: 5, function_id: 'a::b' }, 'invalid_message');
    await expectErrorFrame(c, { type: 'invokefunction', invocation_id: 123, function_id: 'engine::echo', data: 1 }, 'invalid_message');
    const ids = (await listFunctions(watcher)).map((f) => f.function_id);
    assert.ok(!ids.includes('123') && !ids.includes(123), 'numeric id not registered');
    await assertBystanderFine();
  });

  test('invokefunction with an unknown action → invocationresult error for that id (§3.8)', async () => {
    const c = await badClient();
    const res = await c.invoke('engine::echo', { v: 1 }, { action: { type: 'teleport' } });
    assert.equal(res.function_id, 'engine::echo');
    assert.equal(res.result, undefined, 'no result for a refused call');
    assert.equal(typeof res.error?.code, 'string', `error body: ${JSON.stringify(res)}`);
    assert.equal(typeof res.error?.message, 'string');
    await c.ping();
    await assertBystanderFine();
  });

  test('unknown fields are ignored; missing data and config are defaulted (§1.3, §3.8)', async () => {
    const c = await badClient();
    const fnId = `${uniq('lenient')}::fn`;
    c.handlers.set(fnId, async (data) => ({ data }));
    await c.send({ type: 'registerfunction', id: fnId, description: 'd', whatever: { x: 1 }, message_type: 'junk' });
    await c.send({ type: 'registertrigger', id: randomUUID(), trigger_type: uniq('nobody-'), function_id: fnId });
    const noData = await c.invoke('engine::echo', undefined, { omitData: true });
    assert.equal(noData.error, undefined, `no-data call failed: ${JSON.stringify(noData.error)}`);
    assert.ok(noData.result === undefined || noData.result === null);
    assert.deepEqual(await watcher.call(fnId, { q: 1 }), { data: { q: 1 } });
    const nullInvocation = await watcher.invoke(fnId, null, { omitData: true });
    assert.deepEqual(nullInvocation.result, { data: null }, 'engine forwards data:null when the caller sent none');
    const errors = c.messages().filter((m) => m.type === 'error');
    assert.deepEqual(errors, [], 'lenient frames produce no error frames');
  });

  test('whitespace-only frame, registerservice, reattach with unknown ids, unregister of unknown ids are silent', async () => {
    const c = await badClient();
    const since = c.mark();
    await c.send('   \n ');
    await c.send({ type: 'registerservice', id: 'svc', name: 'svc', description: 'a service' });
    await c.send({ type: 'reattach', previous_worker_id: randomUUID(), reattach_token: randomUUID() });
    await c.send({ type: 'reattach', previous_worker_id: 'not-a-uuid' });
    await c.send({ type: 'unregistertrigger', id: randomUUID(), trigger_type: 'http', message_type: 'unregistertrigger' });
    await c.send({ type: 'unregisterfunction', id: `${uniq('never')}::registered` });
    await c.send({ type: 'unregistertriggertype', id: uniq('never-'), description: '' });
    await c.ping();
    const errors = await c.collect((m) => m.type === 'error', 300, since);
    assert.deepEqual(errors, []);
    await assertBystanderFine();
  });

  test('invocationresult for an unknown id is ignored', async () => {
    const c = await badClient();
    const since = c.mark();
    await c.send({ type: 'invocationresult', invocation_id: randomUUID(), function_id: 'x::y', result: 1 });
    await c.send({ type: 'invocationresult', invocation_id: 'not-even-a-uuid', function_id: 'x::y', error: { code: 'e', message: 'm' } });
    await c.ping();
    const unexpected = await c.collect((m) => m.type !== 'pong', 300, since);
    assert.deepEqual(unexpected, []);
    await assertBystanderFine();
  });

  test('a result from the wrong connection does not complete someone else\'s call (§3.7)', async () => {
    const callee = await badClient();
    const intruder = await badClient();
    const fnId = `${uniq('guarded')}::fn`;
    let release;
    const gate = new Promise((r) => (release = r));
    callee.handlers.set(fnId, async () => {
      await gate;
      return 'genuine';
    });
    await callee.send({ type: 'registerfunction', id: fnId });
    await callee.ping();
    const caller = await badClient();
    const pending = caller.invoke(fnId, null, { timeoutMs: 5000 });
    const forwarded = await callee.next((m) => m.type === 'invokefunction' && m.function_id === fnId, { what: 'forwarded call' });
    await intruder.send({ type: 'invocationresult', invocation_id: forwarded.invocation_id, function_id: fnId, result: 'forged' });
    await sleep(200);
    release();
    const res = await pending;
    assert.equal(res.result, 'genuine');
  });

  test('telemetry binary frames on the worker socket are not errors and are ingested (§7.2, §7.3)', async () => {
    const c = await badClient();
    const message = `raw-otlp-${randomUUID()}`;
    const body = {
      resourceLogs: [
        {
          resource: { attributes: [{ key: 'service.name', value: { stringValue: 'raw-compat' } }] },
          scopeLogs: [
            {
              scope: { name: 'raw-compat' },
              logRecords: [
                {
                  timeUnixNano: String(BigInt(Date.now()) * 1000000n),
                  observedTimeUnixNano: String(BigInt(Date.now()) * 1000000n),
                  severityNumber: 13,
                  severityText: 'WARN',
                  body: { stringValue: message },
                  attributes: [
                    { key: 'log.data', value: { kvlistValue: { values: [{ key: 'k', value: { intValue: '1' } }] } } },
                  ],
                },
              ],
            },
          ],
        },
      ],
    };
    const since = c.mark();
    await c.send(Buffer.concat([Buffer.from('LOGS'), Buffer.from(JSON.stringify(body))]), { binary: true });
    await c.send(Buffer.concat([Buffer.from('MTRC'), Buffer.from('{"resourceMetrics":[]}')]), { binary: true });
    await c.send(Buffer.concat([Buffer.from('OTLP'), Buffer.from('{"resourceSpans":[]}')]), { binary: true });
    await c.ping();
    const errors = await c.collect((m) => m.type === 'error', 200, since);
    assert.deepEqual(errors, []);
    const record = await waitFor(
      async () => (await watcher.call('engine::logs::list', { search: message })).logs.find((l) => l.message === message),
      3000,
      { message: 'raw LOGS frame ingested' },
    );
    assert.equal(record.level, 'warn');
    assert.deepEqual(record.data, { k: 1 });
  });

  test('JSON in a binary frame is decoded like text (§1.3 [REC])', async () => {
    const c = await badClient();
    const since = c.mark();
    await c.send(Buffer.from(JSON.stringify({ type: 'ping' })), { binary: true });
    await c.next((m) => m.type === 'pong', { since, what: 'pong for binary-framed ping' });
  });

  test('the /otel socket is accepted, gets no workerregistered, is not listed (§1.1, §7.3)', async () => {
    const otel = await RawClient.connect(`${engine.workerUrl.replace(/\/$/, '')}/otel`);
    bad.push(otel);
    const message = `otel-path-${randomUUID()}`;
    const logs = {
      resourceLogs: [
        {
          scopeLogs: [
            { logRecords: [{ timeUnixNano: String(BigInt(Date.now()) * 1000000n), severityNumber: 9, body: { stringValue: message } }] },
          ],
        },
      ],
    };
    const listedBefore = (await listWorkers(watcher)).map((x) => x.id).sort();
    await otel.send(Buffer.concat([Buffer.from('LOGS'), Buffer.from(JSON.stringify(logs))]), { binary: true });
    await waitFor(
      async () => (await watcher.call('engine::logs::list', { search: message })).logs.some((l) => l.message === message),
      3000,
      { message: '/otel LOGS ingested' },
    );
    await sleep(200);
    assert.ok(otel.open, '/otel socket kept open');
    assert.deepEqual(otel.messages(), [], 'engine sends nothing on /otel');
    const listedAfter = (await listWorkers(watcher)).map((x) => x.id).sort();
    assert.deepEqual(listedAfter, listedBefore, 'the /otel connection is not a worker');
  });

  test('invalid UTF-8 in a text frame: close 1007 or invalid_message; others unaffected', async () => {
    const c = await badClient();
    const since = c.mark();
    await c.send(Buffer.from([0x7b, 0x22, 0x74, 0xff, 0xfe, 0x22, 0x7d]), { binary: false });
    const outcome = await closeOrFrame(c, (m) => m.type === 'error', since);
    if (outcome.closed) {
      assert.equal(outcome.closed.code, 1007, `close code ${outcome.closed.code}`);
    } else {
      assert.equal(outcome.frame.error?.code, 'invalid_message');
      await c.ping();
    }
    await assertBystanderFine();
  });

  for (const [label, size] of [
    ['2 MiB', 2 * 1024 * 1024],
    ['10 MiB+', 10 * 1024 * 1024 + 17],
  ]) {
    test(`${label} frame over the configured 1 MiB max: close 1009 or message_too_large; others unaffected`, async () => {
      const c = await badClient();
      const since = c.mark();
      const huge = JSON.stringify({
        type: 'invokefunction',
        invocation_id: randomUUID(),
        function_id: 'engine::echo',
        data: 'z'.repeat(size),
      });
      // The engine may close while the frame is still being written: the write error is expected.
      await c.send(huge).catch(() => {});
      const outcome = await closeOrFrame(c, (m) => m.type === 'error' || m.type === 'invocationresult', since);
      if (outcome.closed) {
        assert.equal(outcome.closed.code, 1009, `close code ${outcome.closed.code}`);
      } else {
        assert.equal(outcome.frame.type, 'error', `oversized call must not be executed: ${JSON.stringify(outcome.frame).slice(0, 200)}`);
        assert.equal(outcome.frame.error?.code, 'message_too_large');
        await c.ping();
      }
      await assertBystanderFine();
    });
  }

  test('flood of 100k invokefunction to engine::echo: every call answered (result or overloaded)', { timeout: 120000 }, async () => {
    const ws = new WebSocket(engine.workerUrl, { perMessageDeflate: false });
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    const total = 100000;
    const answers = new Map();
    let duplicates = 0;
    let bogus = 0;
    let pongs = 0;
    let done;
    const allAnswered = new Promise((r) => (done = r));
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const m = JSON.parse(data.toString('utf8'));
      if (m.type === 'pong') pongs++;
      if (m.type !== 'invocationresult') return;
      if (answers.has(m.invocation_id)) duplicates++;
      const expected = Number(m.invocation_id.slice(-8));
      if (m.error) {
        if (m.error.code !== 'overloaded') bogus++;
        answers.set(m.invocation_id, 'overloaded');
      } else {
        if (m.result?.i !== expected) bogus++;
        answers.set(m.invocation_id, 'ok');
      }
      if (answers.size === total) done();
    });
    const prefix = randomUUID().slice(0, 28);
    for (let i = 0; i < total; i++) {
      const invocation_id = `${prefix}${String(i).padStart(8, '0')}`;
      ws.send(JSON.stringify({ type: 'invokefunction', invocation_id, function_id: 'engine::echo', data: { i } }));
      if (i % 5000 === 4999) await new Promise((r) => setImmediate(r));
    }
    await withTimeout(allAnswered, 90000, `answers to ${total} calls (got ${answers.size})`).catch((err) => {
      throw new Error(`${err.message}; answered ${answers.size}/${total}`);
    });
    const ok = [...answers.values()].filter((v) => v === 'ok').length;
    assert.equal(duplicates, 0, 'each call answered once');
    assert.equal(bogus, 0, 'answers are either the echoed input or an overloaded error');
    assert.ok(ok > 0, 'some calls succeeded');
    ws.send(JSON.stringify({ type: 'ping' }));
    await waitFor(() => pongs > 0, 5000, { message: 'pong after the flood' });
    ws.terminate();
    await assertBystanderFine();
  });
});

describe('raw invocation flows', () => {
  let engine;
  let watcher;
  let workers;
  const raws = [];

  before(async () => {
    engine = await startEngine();
    watcher = await RawClient.connect(engine.workerUrl);
    workers = new Workers(a);
  });

  after(async () => {
    for (const c of raws) c.terminate();
    await workers?.shutdownAll();
    await watcher?.close();
    await engine?.dispose();
  });

  async function rawClient() {
    const c = await RawClient.connect(engine.workerUrl);
    raws.push(c);
    await c.next((m) => m.type === 'workerregistered', { what: 'workerregistered' });
    return c;
  }

  test('the executing worker sees the caller\'s invocation_id and metadata, payload unchanged (§3.1, §11.6)', async () => {
    const callee = await rawClient();
    const fnId = `${uniq('seen')}::fn`;
    const got = new Recorder();
    callee.handlers.set(fnId, async (data, msg) => {
      got.push(msg);
      return 'done';
    });
    await callee.send({ type: 'registerfunction', id: fnId });
    await callee.ping();
    const caller = await rawClient();
    const invocation_id = randomUUID();
    const since = caller.mark();
    await caller.send({ type: 'invokefunction', invocation_id, function_id: fnId, data: { a: 1 }, metadata: { m: 2 } });
    const res = await caller.next((m) => m.type === 'invocationresult' && m.invocation_id === invocation_id, { since });
    assert.equal(res.result, 'done');
    assert.equal(res.function_id, fnId);
    assert.equal(got.calls[0].invocation_id, invocation_id);
    assert.deepEqual(got.calls[0].data, { a: 1 }, 'no _caller_worker_id injected');
    assert.deepEqual(got.calls[0].metadata, { m: 2 });
    assert.equal(got.calls[0].action, undefined, 'engine never forwards action');
  });

  test('void call: target runs with a fresh UUID invocation_id; the caller gets nothing (§3.2, §11.10)', async () => {
    const sdkWorker = workers.connect(engine.workerUrl);
    const fnId = `${uniq('void')}::fn`;
    const seen = new Recorder();
    a.fn(sdkWorker, fnId, async (x) => {
      seen.push(x);
      return 'discarded';
    });
    await ready(a, sdkWorker, watcher);
    const rawCallee = await rawClient();
    const rawFn = `${uniq('void-raw')}::fn`;
    const rawSeen = new Recorder();
    rawCallee.handlers.set(rawFn, async (data, msg) => {
      rawSeen.push(msg);
      return 'discarded too';
    });
    await rawCallee.send({ type: 'registerfunction', id: rawFn });
    await rawCallee.ping();

    const caller = await rawClient();
    const since = caller.mark();
    await caller.send({ type: 'invokefunction', function_id: fnId, data: { v: 1 }, action: { type: 'void' } });
    await caller.send({ type: 'invokefunction', function_id: rawFn, data: { v: 2 }, action: { type: 'void' } });
    await caller.send({ type: 'invokefunction', function_id: `${uniq('nobody')}::fn`, data: {}, action: { type: 'void' } });
    await waitFor(() => seen.count === 1 && rawSeen.count === 1, 3000, { message: 'void targets ran' });
    assert.deepEqual(seen.calls[0], { v: 1 });
    assert.ok(isUuid(rawSeen.calls[0].invocation_id), 'engine gives the target a UUID invocation_id');
    assert.deepEqual(rawSeen.calls[0].data, { v: 2 });
    await caller.ping();
    const replies = await caller.collect((m) => m.type !== 'pong', 500, since);
    assert.deepEqual(replies, [], 'a void caller receives nothing, not even errors');
  });

  test('executing raw worker disconnects: caller gets invocation_stopped (§3.7, §11.13)', async () => {
    const callee = await rawClient();
    const fnId = `${uniq('drop')}::fn`;
    await callee.send({ type: 'registerfunction', id: fnId });
    await callee.ping();
    const caller = await rawClient();
    const pending = caller.invoke(fnId, { x: 1 }, { timeoutMs: 5000 });
    await callee.next((m) => m.type === 'invokefunction' && m.function_id === fnId, { what: 'forwarded call' });
    const closedAt = Date.now();
    callee.terminate();
    const res = await pending;
    assert.equal(res.error?.code, 'invocation_stopped', JSON.stringify(res));
    assert.equal(typeof res.error?.message, 'string');
    assert.ok(Date.now() - closedAt < 1000, `after ${Date.now() - closedAt} ms`);
  });

  test('error bodies from workers pass through unchanged (§3.6)', async () => {
    const callee = await rawClient();
    const fnId = `${uniq('err')}::fn`;
    await callee.send({ type: 'registerfunction', id: fnId });
    await callee.ping();
    const caller = await rawClient();
    const pending = caller.invoke(fnId, null);
    const call = await callee.next((m) => m.type === 'invokefunction' && m.function_id === fnId);
    const error = { code: 'custom_code', message: 'custom message', stacktrace: 'at line 1' };
    await callee.send({ type: 'invocationresult', invocation_id: call.invocation_id, function_id: fnId, error });
    const res = await pending;
    assert.deepEqual(res.error, error);
    assert.equal(res.result, undefined);
  });

  test('calling worker disconnects before the answer: the late result is dropped quietly (§3.7)', async () => {
    const callee = await rawClient();
    const fnId = `${uniq('orphan')}::fn`;
    await callee.send({ type: 'registerfunction', id: fnId });
    await callee.ping();
    const caller = await rawClient();
    await caller.send({ type: 'invokefunction', invocation_id: randomUUID(), function_id: fnId, data: 1 });
    const call = await callee.next((m) => m.type === 'invokefunction' && m.function_id === fnId);
    await caller.close();
    await sleep(100);
    const since = callee.mark();
    await callee.send({ type: 'invocationresult', invocation_id: call.invocation_id, function_id: fnId, result: 'late' });
    await callee.ping();
    const errors = await callee.collect((m) => m.type === 'error', 200, since);
    assert.deepEqual(errors, []);
    assert.equal(await watcher.call('engine::echo', 'alive'), 'alive');
  });

  test('engine answers WebSocket-level pings (§1.4)', async () => {
    const c = await rawClient();
    const payload = Buffer.from('are-you-there');
    const pong = new Promise((resolve) => c.ws.once('pong', (data) => resolve(Buffer.from(data))));
    c.ws.ping(payload);
    const got = await withTimeout(pong, 2000, 'WS pong');
    assert.deepEqual(got, payload);
  });
});
