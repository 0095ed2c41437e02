// Function registration and invocation through the SDK under test (protocol.md §2–§3, §8.2, §11 1–17).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  RawClient,
  settle,
  sleep,
  spawnWorker,
  startEngine,
  uniq,
  waitFor,
  waitForCallable,
  listFunctions,
  listWorkers,
  httpRequest,
} from '../harness.mjs';
import { Recorder, Workers, ready } from '../common.mjs';

export function invokeSuite(a) {
  describe(`invocations with iii-sdk ${a.gen}`, () => {
    let engine;
    let raw;
    let workers;
    let callee;
    let caller;

    before(async () => {
      engine = await startEngine();
      raw = await RawClient.connect(engine.workerUrl);
      workers = new Workers(a);
      callee = workers.connect(engine.workerUrl, { name: uniq('callee-') });
      caller = workers.connect(engine.workerUrl, { name: uniq('caller-') });
      await ready(a, callee, raw);
      await ready(a, caller, raw);
    });

    after(async () => {
      await workers?.shutdownAll();
      await raw?.close();
      await engine?.dispose();
    });

    test('worker-to-worker call returns the value and the payload reaches the handler unchanged', async () => {
      const id = `${uniq('w2w')}::echo`;
      const seen = new Recorder();
      a.fn(callee, id, async (input, metadata) => {
        seen.push({ input, metadata });
        return { got: input };
      });
      await ready(a, callee, raw);
      const payload = { a: 1, nested: { list: [1, 'two', null], flag: true }, text: 'héllo ✓' };
      const request = { function_id: id, payload };
      if (a.hasMetadataArg) request.metadata = { tenant: 'acme' };
      const result = await caller.trigger(request);
      assert.deepEqual(result, { got: payload });
      assert.equal(seen.count, 1);
      // Our engine never injects `_caller_worker_id` (deliberate divergence): byte-for-byte payload.
      assert.deepEqual(seen.calls[0].input, payload);
      if (a.hasMetadataArg) assert.deepEqual(seen.calls[0].metadata, { tenant: 'acme' });
    });

    test('scalar, array and null payloads round-trip', async () => {
      const id = `${uniq('scalar')}::echo`;
      a.fn(callee, id, async (input) => ({ input }));
      await ready(a, callee, raw);
      for (const payload of [42, 'str', [1, [2]], null, false, 0, '']) {
        assert.deepEqual(await caller.trigger({ function_id: id, payload }), { input: payload });
      }
    });

    test('floating-point numbers pass through the engine bit-exactly', async () => {
      const id = `${uniq('floats')}::echo`;
      const seen = new Recorder();
      a.fn(callee, id, async (input) => {
        seen.push(input);
        return input;
      });
      await ready(a, callee, raw);
      // Values that a lossy (non round-trip) float parser changes in the last digit.
      const payload = {
        known: [0.9487042761550113, 0.11253879446944715, 0.21575588132800894, 0.22699425832312325, 0.053161289971765724],
        random: Array.from({ length: 300 }, () => Math.random() * 10 ** Math.floor(Math.random() * 20 - 10)),
        edge: [0.30000000000000004, 5e-324, 1.7976931348623157e308, 2.2250738585072014e-308, -0, 1e21, 1e-7],
      };
      const result = await caller.trigger({ function_id: id, payload });
      const diff = (got) => payload.random.concat(payload.known, payload.edge).filter((v, i) => {
        const all = got.random.concat(got.known, got.edge);
        return all[i] !== v;
      });
      assert.deepEqual(diff(seen.calls[0]), [], 'numbers changed on the way to the handler');
      assert.deepEqual(diff(result), [], 'numbers changed on the way back');
    });

    test('a handler returning nothing resolves undefined', async () => {
      const id = `${uniq('void-ret')}::noop`;
      a.fn(callee, id, async () => undefined);
      await ready(a, callee, raw);
      assert.equal(await caller.trigger({ function_id: id, payload: { x: 1 } }), undefined);
      // protocol.md §2.4: the engine omits `result` when the worker sent none.
      const res = await raw.invoke(id, { x: 1 });
      assert.equal(res.error, undefined);
      assert.ok(res.result === undefined || res.result === null, `result ${JSON.stringify(res.result)}`);
    });

    test('a call with payload undefined completes (engine defaults data to null, §3.8)', async () => {
      const id = `${uniq('nodata')}::echo`;
      const seen = new Recorder();
      a.fn(callee, id, async (input) => {
        seen.push(input);
        return 'ran';
      });
      await ready(a, callee, raw);
      const r = await settle(caller.trigger({ function_id: id, payload: undefined, timeoutMs: 3000 }));
      assert.ok(r.ok, `call without data failed: ${r.error?.message ?? JSON.stringify(r.error)}`);
      assert.equal(r.value, 'ran');
      assert.equal(seen.calls[0], null);
    });

    test('void call: resolves at once, target runs exactly once', async () => {
      const id = `${uniq('void')}::count`;
      const seen = new Recorder();
      a.fn(callee, id, async (input) => {
        seen.push(input);
        return 'ignored';
      });
      await ready(a, callee, raw);
      const r = await settle(caller.trigger({ function_id: id, payload: { n: 7 }, action: a.TriggerAction.Void() }));
      assert.ok(r.ok);
      assert.equal(r.value, undefined);
      assert.ok(r.ms < 200, `void call took ${r.ms} ms`);
      await waitFor(() => seen.count === 1, 3000, { message: 'void target ran' });
      await sleep(300);
      assert.equal(seen.count, 1, 'target must run exactly once');
      assert.deepEqual(seen.calls[0], { n: 7 });
    });

    test('handler error propagates as invocation_failed with message and stacktrace (§3.4)', async () => {
      const id = `${uniq('fail')}::boom`;
      a.fn(callee, id, async () => {
        throw new Error('boom: disk on fire');
      });
      await ready(a, callee, raw);
      const r = await settle(caller.trigger({ function_id: id, payload: {} }));
      assert.equal(r.ok, false, 'call must reject');
      const body = a.assertInvocationError(r.error, 'invocation_failed', 'boom: disk on fire');
      assert.equal(typeof body.stacktrace, 'string', 'stacktrace passed through unchanged');
      assert.match(body.stacktrace, /boom: disk on fire/);
    });

    test('unknown function rejects promptly with function_not_found (§3.1, §11.9, §11.35)', async () => {
      const id = `${uniq('missing')}::nothing`;
      const r = await settle(caller.trigger({ function_id: id, payload: {}, timeoutMs: 5000 }));
      assert.equal(r.ok, false);
      assert.ok(r.ms < 1000, `function_not_found took ${r.ms} ms`);
      const body = a.assertInvocationError(r.error, 'function_not_found');
      assert.ok(body.message.includes(id), `message "${body.message}" should name ${id}`);
    });

    test('enqueue without a queue provider answers enqueue_error (§3.3)', async () => {
      const id = `${uniq('enq')}::job`;
      a.fn(callee, id, async () => 'should not run via queue');
      await ready(a, callee, raw);
      const r = await settle(
        caller.trigger({ function_id: id, payload: { j: 1 }, action: a.TriggerAction.Enqueue({ queue: 'jobs' }), timeoutMs: 3000 }),
      );
      assert.equal(r.ok, false, `enqueue must fail while queues are absent, got ${JSON.stringify(r.value)}`);
      a.assertInvocationError(r.error, 'enqueue_error');
    });

    test('SDK timeoutMs: caller gets its generation-specific timeout; the late result is harmless', async () => {
      const id = `${uniq('slow')}::sleep`;
      a.fn(callee, id, async () => {
        await sleep(700);
        return 'late';
      });
      const echo = `${uniq('after')}::echo`;
      a.fn(callee, echo, async (x) => x);
      await ready(a, callee, raw);
      const r = await settle(caller.trigger({ function_id: id, payload: {}, timeoutMs: 200 }));
      assert.equal(r.ok, false);
      a.assertTimeoutError(r.error, 200, id);
      await sleep(800); // the late invocationresult arrives and must be dropped quietly
      assert.deepEqual(await caller.trigger({ function_id: echo, payload: { still: 'ok' } }), { still: 'ok' });
    });

    test('unregister() makes further calls fail with function_not_found (§2.2, §11.15)', async () => {
      const id = `${uniq('unreg')}::temp`;
      const ref = a.fn(callee, id, async () => 'here');
      await ready(a, callee, raw);
      assert.equal(await caller.trigger({ function_id: id, payload: {} }), 'here');
      ref.unregister();
      await waitFor(async () => (await raw.invoke(id, {})).error?.code === 'function_not_found', 3000, {
        message: 'function removed',
      });
      const r = await settle(caller.trigger({ function_id: id, payload: {} }));
      a.assertInvocationError(r.error, 'function_not_found');
    });

    test('registration options: description is stored and listed with the worker name', async () => {
      const id = `${uniq('desc')}::described`;
      const name = uniq('describer-');
      const w = workers.connect(engine.workerUrl, { name });
      const options = { description: 'does a thing' };
      if (a.gen === '0.9.0') options.custom = 1; // §11.33: 0.9.0 sends every key; extras ignored
      a.fn(w, id, async () => 'ok', options);
      await ready(a, w, raw);
      assert.equal(await caller.trigger({ function_id: id, payload: {} }), 'ok');
      const entry = (await listFunctions(raw)).find((f) => f.function_id === id);
      assert.ok(entry, `${id} listed by engine::functions::list`);
      assert.equal(entry.description, 'does a thing');
      await waitFor(
        async () => (await listFunctions(raw)).find((f) => f.function_id === id)?.worker_name === name,
        3000,
        { message: 'worker_name of the function becomes the worker name' },
      );
      await workers.shutdown(w);
    });

    test('engine::workers::list shows name, runtime and version of the worker (§4.1, §11.2)', async () => {
      const name = uniq(`listed-${a.gen}-`);
      const w = workers.connect(engine.workerUrl, { name });
      const id = `${uniq('listed')}::fn`;
      a.fn(w, id, async () => 1);
      await ready(a, w, raw);
      const entry = await waitFor(
        async () => {
          const matches = (await listWorkers(raw)).filter((x) => x.name === name);
          return matches.length === 1 ? matches[0] : false;
        },
        3000,
        { message: `exactly one worker named ${name}` },
      );
      assert.equal(entry.runtime, 'node');
      assert.equal(entry.version, a.gen);
      assert.equal(entry.pid, process.pid);
      assert.equal(typeof entry.id, 'string');
      assert.equal(typeof entry.os, 'string');
      assert.equal(typeof entry.status, 'string');
      assert.ok(entry.function_count >= 2, `function_count ${entry.function_count}`);
      assert.ok(
        Array.isArray(entry.functions) && entry.functions.some((f) => f === id || f?.function_id === id),
        `functions lists ${id}: ${JSON.stringify(entry.functions)}`,
      );
      await workers.shutdown(w);
      await waitFor(async () => !(await listWorkers(raw)).some((x) => x.name === name), 3000, {
        message: 'worker leaves the list after shutdown',
      });
    });

    test('duplicate function id is not stolen; the standby takes over when the owner leaves', async () => {
      const id = `${uniq('dup')}::owner`;
      const first = workers.connect(engine.workerUrl, { name: uniq('first-') });
      a.fn(first, id, async () => 'first');
      await ready(a, first, raw);
      const second = workers.connect(engine.workerUrl, { name: uniq('second-') });
      a.fn(second, id, async () => 'second');
      await ready(a, second, raw);
      for (let i = 0; i < 10; i++) {
        assert.equal(await caller.trigger({ function_id: id, payload: i }), 'first', `call ${i} went to the standby`);
      }
      await workers.shutdown(first);
      await waitFor(async () => (await raw.invoke(id, null)).result === 'second', 3000, {
        message: 'standby owner answers after the first owner disconnected',
      });
      assert.equal(await caller.trigger({ function_id: id, payload: 'x' }), 'second');
      await workers.shutdown(second);
      await waitFor(async () => (await raw.invoke(id, null)).error?.code === 'function_not_found', 3000, {
        message: 'function gone when its last owner left',
      });
    });

    test('executing worker killed mid-call: caller gets invocation_stopped within 1 s (§3.7)', async () => {
      const p = uniq('killme');
      const child = spawnWorker(a, {
        url: engine.workerUrl,
        name: `${p}-worker`,
        functions: [
          { id: `${p}::hang`, kind: 'hang' },
          { id: `${p}::probe`, kind: 'echo' },
        ],
      });
      try {
        await waitForCallable(raw, `${p}::probe`, { timeoutMs: 10000 });
        const pending = settle(caller.trigger({ function_id: `${p}::hang`, payload: { wait: true }, timeoutMs: 10000 }));
        await child.waitLine((l) => l.startsWith(`CALLED ${p}::hang`), 5000);
        const killedAt = Date.now();
        await child.kill('SIGKILL');
        const r = await pending;
        const afterKill = Date.now() - killedAt;
        assert.equal(r.ok, false, 'call must fail');
        a.assertInvocationError(r.error, 'invocation_stopped');
        assert.ok(afterKill < 1000, `invocation_stopped arrived ${afterKill} ms after the kill`);
        await waitFor(async () => (await raw.invoke(`${p}::hang`, null)).error?.code === 'function_not_found', 3000, {
          message: 'killed worker functions removed',
        });
      } finally {
        await child.kill('SIGKILL');
      }
    });

    test('10 MiB payload round trip through the engine (§1.3, §11.17)', async () => {
      const id = `${uniq('big')}::echo`;
      a.fn(callee, id, async (input) => ({ len: input.blob.length, tail: input.blob.slice(-8), blob: input.blob }));
      await ready(a, callee, raw);
      const blob = `${'x'.repeat(10 * 1024 * 1024)}-the-end`;
      const result = await caller.trigger({ function_id: id, payload: { blob }, timeoutMs: 30000 });
      assert.equal(result.len, blob.length);
      assert.equal(result.tail, blob.slice(-8));
      assert.equal(result.blob.length, blob.length);
      assert.ok(result.blob === blob, 'echoed blob identical');
    });
  });

  describe(`engine limits and deadlines with iii-sdk ${a.gen}`, () => {
    let engine;
    let raw;
    let workers;

    before(async () => {
      engine = await startEngine({ extraArgs: ['--invocation-timeout-ms', '300'] });
      raw = await RawClient.connect(engine.workerUrl);
      workers = new Workers(a);
    });

    after(async () => {
      await workers?.shutdownAll();
      await raw?.close();
      await engine?.dispose();
    });

    test('a slow handler fails with invocation_timeout; fast calls unaffected', async () => {
      const p = uniq('eto');
      const w = workers.connect(engine.workerUrl);
      const c = workers.connect(engine.workerUrl);
      a.fn(w, `${p}::slow`, async () => {
        await sleep(1500);
        return 'too late';
      });
      a.fn(w, `${p}::fast`, async (x) => x);
      await ready(a, w, raw);
      await ready(a, c, raw);

      const r = await settle(c.trigger({ function_id: `${p}::slow`, payload: {}, timeoutMs: 5000 }));
      assert.equal(r.ok, false);
      a.assertInvocationError(r.error, 'invocation_timeout');
      assert.ok(r.ms >= 250 && r.ms < 1300, `engine timeout after ${r.ms} ms (configured 300)`);
      assert.deepEqual(await c.trigger({ function_id: `${p}::fast`, payload: { ok: 1 } }), { ok: 1 });
    });

    test('the invocation deadline also bounds an HTTP-triggered call: 504', async () => {
      const p = uniq('eto-http');
      const w = workers.connect(engine.workerUrl);
      a.fn(w, `${p}::slow`, async () => {
        await sleep(1500);
        return 'too late';
      });
      w.registerTrigger({ type: 'http', function_id: `${p}::slow`, config: { api_path: `/${p}/slow`, http_method: 'GET' } });
      await ready(a, w, raw);
      const res = await httpRequest(`${engine.httpUrl}/${p}/slow`);
      assert.equal(res.status, 504, `status ${res.status} body ${res.text}`);
      assert.ok(res.ms < 1400, `504 after ${res.ms} ms (invocation deadline 300)`);
    });

    test('calls beyond --max-inflight-per-worker are refused with overloaded', async () => {
      const limited = await startEngine({ extraArgs: ['--max-inflight-per-worker', '2'] });
      const local = new Workers(a);
      const localRaw = await RawClient.connect(limited.workerUrl);
      try {
        const p = uniq('busy');
        const w = local.connect(limited.workerUrl);
        const c = local.connect(limited.workerUrl);
        a.fn(w, `${p}::slow`, async (n) => {
          await sleep(600);
          return n;
        });
        await ready(a, w, localRaw);
        await ready(a, c, localRaw);
        const calls = [1, 2, 3].map((n) => settle(c.trigger({ function_id: `${p}::slow`, payload: n, timeoutMs: 5000 })));
        const results = await Promise.all(calls);
        const ok = results.filter((r) => r.ok);
        const refused = results.filter((r) => !r.ok);
        // The engine may start the three calls in any order; exactly one must be refused.
        assert.equal(ok.length, 2, `two calls fit the limit: ${JSON.stringify(results.map((r) => r.ok))}`);
        assert.equal(refused.length, 1);
        a.assertInvocationError(refused[0].error, 'overloaded');
        assert.ok(refused[0].ms < 400, `overloaded answered after ${refused[0].ms} ms, before a slot freed up`);
        assert.equal(await c.trigger({ function_id: `${p}::slow`, payload: 4 }), 4, 'capacity comes back');
      } finally {
        await local.shutdownAll();
        await localRaw.close();
        await limited.dispose();
      }
    });

    test('HTTP request deadline (--http-timeout-ms) answers 504 (http.md §8)', async () => {
      const httpEngine = await startEngine({ extraArgs: ['--http-timeout-ms', '300'] });
      const local = new Workers(a);
      const localRaw = await RawClient.connect(httpEngine.workerUrl);
      try {
        const p = uniq('hto');
        const w = local.connect(httpEngine.workerUrl);
        a.fn(w, `${p}::slow`, async () => {
          await sleep(1500);
          return 'too late';
        });
        w.registerTrigger({ type: 'http', function_id: `${p}::slow`, config: { api_path: `/${p}/slow`, http_method: 'GET' } });
        await ready(a, w, localRaw);
        const started = Date.now();
        const res = await httpRequest(`${httpEngine.httpUrl}/${p}/slow`);
        const ms = Date.now() - started;
        assert.equal(res.status, 504, `status ${res.status} body ${res.text}`);
        assert.ok(ms >= 250 && ms < 1400, `504 after ${ms} ms (deadline 300)`);
      } finally {
        await local.shutdownAll();
        await localRaw.close();
        await httpEngine.dispose();
      }
    });
  });
}
