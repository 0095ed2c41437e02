// Engine restart on the same ports: the SDK reconnects and replays (protocol.md §1.5, §1.6, §8.2,
// §11.25, §11.26, §11.34; http.md §2.3).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  RawClient,
  TcpProxy,
  freePort,
  httpRequest,
  listTriggers,
  listWorkers,
  settle,
  sleep,
  startEngine,
  uniq,
  waitFor,
  waitForRoute,
} from '../harness.mjs';
import { Recorder, Workers, ready } from '../common.mjs';

export function reconnectSuite(a) {
  describe(`reconnect after an engine restart with iii-sdk ${a.gen}`, () => {
    let engine;
    let workers;
    const raws = [];

    before(async () => {
      const ports = { worker: await freePort(), http: await freePort(), stream: await freePort() };
      engine = await startEngine({ ports });
      workers = new Workers(a);
    });

    after(async () => {
      await workers?.shutdownAll();
      for (const r of raws) await r.close();
      await engine?.dispose();
    });

    async function rawClient() {
      const r = await RawClient.connect(engine.workerUrl);
      raws.push(r);
      return r;
    }

    test('registrations are replayed: calls, HTTP routes and custom triggers work again, no duplicates', async () => {
      const p = uniq('rc');
      const name = uniq(`restart-${a.gen}-`);
      const fastReconnect = { reconnectionConfig: { initialDelayMs: 200, maxDelayMs: 1000 } };
      const w = workers.connect(engine.workerUrl, { name, ...fastReconnect });
      const c = workers.connect(engine.workerUrl, { name: uniq('restart-caller-'), ...fastReconnect });
      const delivered = new Recorder();
      if (typeof w.registerService === 'function') {
        w.registerService({ id: `${p}-svc`, description: 'replayed service' });
      }
      w.registerTriggerType(
        { id: `${p}-type`, description: 'replayed type' },
        { registerTrigger: async (t) => delivered.push(t), unregisterTrigger: async () => {} },
      );
      a.fn(w, `${p}::echo`, async (x) => ({ echo: x }));
      a.fn(w, `${p}::http`, async (req) => ({ n: req.n, body: req.body }));
      w.registerTrigger({ type: 'http', function_id: `${p}::http`, config: { api_path: `/${p}/echo`, http_method: 'POST' } });
      w.registerTrigger({ type: `${p}-type`, function_id: `${p}::echo`, config: { k: 'v' } });

      let raw = await rawClient();
      await ready(a, w, raw);
      await ready(a, c, raw);
      assert.deepEqual(await c.trigger({ function_id: `${p}::echo`, payload: 1 }), { echo: 1 });
      await waitForRoute(`${engine.httpUrl}/${p}/echo`, { method: 'POST', json: { n: 1 }, want: (r) => r.status === 200 });
      await waitFor(() => delivered.count === 1, 3000, { message: 'custom trigger delivered before restart' });
      const mine = (t) => t.function_id === `${p}::echo` || t.function_id === `${p}::http`;
      const triggersBefore = (await listTriggers(raw, true)).filter(mine);
      assert.equal(triggersBefore.length, 2, `two bindings before restart: ${JSON.stringify(triggersBefore)}`);
      const idsBefore = triggersBefore.map((t) => t.id).sort();

      await engine.restart();
      raw = await rawClient();

      const answered = await waitFor(
        async () => {
          const r = await settle(c.trigger({ function_id: `${p}::echo`, payload: 2, timeoutMs: 1000 }));
          return r.ok ? r : false;
        },
        15000,
        { message: 'caller and callee reconnected and replayed', interval: 200 },
      );
      assert.deepEqual(answered.value, { echo: 2 });

      const viaHttp = await waitForRoute(`${engine.httpUrl}/${p}/echo`, {
        method: 'POST',
        json: { n: 2 },
        want: (r) => r.status === 200,
        timeoutMs: 5000,
      });
      assert.deepEqual(viaHttp.json, { n: 2, body: { n: 2 } });

      await waitFor(() => delivered.count === 2, 5000, { message: 'custom trigger re-delivered after restart' });
      assert.equal(delivered.calls[1].id, delivered.calls[0].id, 'replayed trigger keeps its id');
      assert.deepEqual(delivered.calls[1].config, { k: 'v' });

      await sleep(300);
      const triggersAfter = (await listTriggers(raw, true)).filter(mine);
      assert.deepEqual(triggersAfter.map((t) => t.id).sort(), idsBefore, 'same bindings, no duplicates');
      const named = (await listWorkers(raw)).filter((x) => x.name === name);
      assert.equal(named.length, 1, `worker ${name} listed once after restart`);
      assert.equal(delivered.count, 2, 'no extra deliveries');

      // The replayed registrations must still be there a while later (§11.34).
      await sleep(1000);
      assert.deepEqual(await c.trigger({ function_id: `${p}::echo`, payload: 3 }), { echo: 3 });
      const again = await httpRequest(`${engine.httpUrl}/${p}/echo`, { method: 'POST', json: { n: 3 } });
      assert.equal(again.status, 200);
    });

    test('stale connection cleaned up after the replay does not remove replayed registrations (§8.2, §12.2, §11.34)', async () => {
      const p = uniq('stale');
      const raw = await rawClient();
      // A raw provider for a custom type, to see what the engine tells providers about the binding.
      const provider = await rawClient();
      await provider.send({ type: 'registertriggertype', id: `${p}-type`, description: 'stale test' });
      await provider.ping();

      const proxy = await TcpProxy.start(engine.ports.worker);
      try {
        const name = uniq(`stale-${a.gen}-`);
        const w = workers.connect(proxy.url, { name, reconnectionConfig: { initialDelayMs: 200, maxDelayMs: 1000 } });
        a.fn(w, `${p}::echo`, async (x) => ({ echo: x }));
        a.fn(w, `${p}::http`, async (req) => ({ q: req.query_params.q }));
        w.registerTrigger({ type: 'http', function_id: `${p}::http`, config: { api_path: `/${p}`, http_method: 'GET' } });
        w.registerTrigger({ type: `${p}-type`, function_id: `${p}::echo`, config: { s: 1 } });
        await ready(a, w, raw);
        await waitForRoute(`${engine.httpUrl}/${p}?q=1`, { want: (r) => r.status === 200 });
        const bound = await provider.next((m) => m.type === 'registertrigger' && m.function_id === `${p}::echo`, {
          what: 'binding delivered to the provider',
        });
        const oldWorkerId = w.workerId;

        // Break the link on the SDK side only; the engine keeps the old connection open.
        const stale = proxy.cutClients();
        await waitFor(() => w.workerId && w.workerId !== oldWorkerId, 10000, { message: 'SDK reconnected' });
        await ready(a, w, raw); // the replay on the new connection has been applied
        const sinceReplay = provider.mark();

        // Now the engine notices the old connection is gone and cleans it up.
        for (const pair of stale) pair.upstream.destroy();
        await sleep(500);

        assert.deepEqual(await raw.call(`${p}::echo`, 'after'), { echo: 'after' });
        const res = await httpRequest(`${engine.httpUrl}/${p}?q=2`);
        assert.equal(res.status, 200, `HTTP route survived the stale cleanup: ${res.status} ${res.text}`);
        assert.deepEqual(res.json, { q: '2' });
        const triggers = (await listTriggers(raw, true)).filter((t) => t.function_id.startsWith(`${p}::`));
        assert.equal(triggers.length, 2, `both bindings still registered once: ${JSON.stringify(triggers)}`);
        assert.ok(triggers.some((t) => t.id === bound.id), 'custom binding kept its id');
        const toProvider = provider.messages(sinceReplay).filter((m) => m.id === bound.id);
        const last = toProvider.at(-1);
        assert.ok(
          last === undefined || last.type === 'registertrigger',
          `provider must not be left with the binding unregistered: ${JSON.stringify(toProvider)}`,
        );
        const named = (await listWorkers(raw)).filter((x) => x.name === name);
        assert.equal(named.length, 1, 'only the new connection is listed');
        assert.equal(named[0].id, w.workerId);
      } finally {
        await proxy.close();
      }
    });

    test('half-open old connection: the reconnected worker takes over after the engine probes the silent owner', async () => {
      const p = uniq('halfopen');
      const raw = await rawClient();
      const proxy = await TcpProxy.start(engine.ports.worker);
      try {
        const name = uniq(`halfopen-${a.gen}-`);
        const w = workers.connect(proxy.url, { name, reconnectionConfig: { initialDelayMs: 200, maxDelayMs: 1000 } });
        a.fn(w, `${p}::echo`, async (x) => ({ echo: x }));
        await ready(a, w, raw);
        assert.deepEqual(await raw.call(`${p}::echo`, 'before'), { echo: 'before' });
        const oldWorkerId = w.workerId;
        // Cut the SDK side only and never close the engine side: no FIN ever reaches the engine.
        proxy.cutClients();
        await waitFor(() => w.workerId && w.workerId !== oldWorkerId, 10000, { message: 'SDK reconnected' });
        // The replayed registration conflicts with the silent owner; the engine pings it, gets no
        // answer and hands the function to the new connection (probe timeout 5 s). Each probe call
        // is bounded by the engine timeout of this suite's engine or fails fast as invocation_stopped.
        await waitFor(async () => {
          const r = await raw.call(`${p}::echo`, 'after');
          return r && r.echo === 'after';
        }, 15000, { message: 'function served by the reconnected worker', interval: 250 });
        const named = (await listWorkers(raw)).filter((x) => x.name === name);
        assert.equal(named.length, 1, `only the new connection is listed: ${JSON.stringify(named)}`);
        assert.equal(named[0].id, w.workerId);
      } finally {
        await proxy.close();
      }
    });
  });
}
