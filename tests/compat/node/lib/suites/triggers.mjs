// Custom trigger types provided by workers (protocol.md §2.5–§2.8, §5, §11 19–22).

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { RawClient, isUuid, sleep, startEngine, uniq, waitFor, listTriggers } from '../harness.mjs';
import { Recorder, Workers, ready } from '../common.mjs';

export function customTriggerSuite(a) {
  describe(`custom trigger types with iii-sdk ${a.gen}`, () => {
    let engine;
    let raw;
    let workers;
    let provider;
    let binder;

    before(async () => {
      engine = await startEngine();
      raw = await RawClient.connect(engine.workerUrl);
      workers = new Workers(a);
      provider = workers.connect(engine.workerUrl, { name: uniq('provider-') });
      binder = workers.connect(engine.workerUrl, { name: uniq('binder-') });
      await ready(a, provider, raw);
      await ready(a, binder, raw);
    });

    after(async () => {
      await workers?.shutdownAll();
      await raw?.close();
      await engine?.dispose();
    });

    function provide(iii, type, onRegister, onUnregister = () => {}) {
      iii.registerTriggerType(
        { id: type, description: `compat ${type}` },
        {
          registerTrigger: async (t) => onRegister(t),
          unregisterTrigger: async (t) => onUnregister(t),
        },
      );
    }

    test('provider receives registertrigger; its firing is an ordinary call (§5.3)', async () => {
      const type = uniq('hook-');
      const fnId = `${uniq('bound')}::on-hook`;
      const delivered = new Recorder();
      provide(provider, type, (t) => delivered.push(t));
      await ready(a, provider, raw);

      const handled = new Recorder();
      a.fn(binder, fnId, async (payload) => {
        handled.push(payload);
        return { handled: payload.event };
      });
      binder.registerTrigger({ type, function_id: fnId, config: { path: '/x' }, metadata: { m: 1 } });
      await ready(a, binder, raw);

      const t = await waitFor(() => delivered.calls[0], 3000, { message: 'provider got the trigger' });
      assert.equal(delivered.count, 1, 'delivered once');
      assert.ok(isUuid(t.id), `trigger id ${t.id} is the SDK-generated UUID`);
      assert.equal(t.function_id, fnId);
      assert.deepEqual(t.config, { path: '/x' });
      if (a.providerSeesMetadata) assert.deepEqual(t.metadata, { m: 1 });

      // The provider fires by calling the bound function like any other function.
      const result = await provider.trigger({ function_id: t.function_id, payload: { event: 'push' } });
      assert.deepEqual(result, { handled: 'push' });
      assert.deepEqual(handled.calls, [{ event: 'push' }]);

      const listed = (await listTriggers(raw, true)).filter((x) => x.id === t.id);
      assert.equal(listed.length, 1, 'engine::triggers::list shows the binding once');
      assert.equal(listed[0].trigger_type, type);
      assert.equal(listed[0].function_id, fnId);
      assert.deepEqual(listed[0].config, { path: '/x' });
    });

    test('trigger of a type registered later is held, then delivered (§5.1 step 3, §11.19)', async () => {
      const type = uniq('late-');
      const fnId = `${uniq('waiting')}::fn`;
      a.fn(binder, fnId, async () => 'ok');
      binder.registerTrigger({ type, function_id: fnId, config: { every: 'tick' } });
      await ready(a, binder, raw);
      await sleep(200);

      const lateProvider = workers.connect(engine.workerUrl, { name: uniq('late-provider-') });
      const delivered = new Recorder();
      provide(lateProvider, type, (t) => delivered.push(t));
      const t = await waitFor(() => delivered.calls[0], 5000, { message: 'held trigger delivered to the new provider' });
      assert.equal(t.function_id, fnId);
      assert.deepEqual(t.config, { every: 'tick' });
      assert.ok(isUuid(t.id));
      assert.equal(await lateProvider.trigger({ function_id: t.function_id, payload: {} }), 'ok');
      await sleep(200);
      assert.equal(delivered.count, 1, 'delivered exactly once');
    });

    test('provider throwing: the binding worker receives triggerregistrationresult with the error (§2.7, §11.20)', async () => {
      const type = uniq('picky-');
      provide(provider, type, () => {
        throw new Error('unsupported config: nope');
      });
      await ready(a, provider, raw);
      // The binding worker is raw so the error report itself is observable for every generation
      // (0.9.0/0.11.6 silently ignore it; 0.22.1 prints it).
      const binderRaw = await RawClient.connect(engine.workerUrl);
      try {
        const id = randomUUID();
        const fnId = `${uniq('rejected')}::fn`;
        const since = binderRaw.mark();
        await binderRaw.send({ type: 'registertrigger', id, trigger_type: type, function_id: fnId, config: { bad: true } });
        const report = await binderRaw.next((m) => m.type === 'triggerregistrationresult' && m.id === id, {
          since,
          timeoutMs: 3000,
          what: 'triggerregistrationresult',
        });
        assert.equal(report.trigger_type, type);
        assert.equal(report.function_id, fnId);
        assert.equal(report.error?.code, 'trigger_registration_failed');
        assert.match(report.error?.message ?? '', /unsupported config: nope/);
        await binderRaw.ping();
      } finally {
        await binderRaw.close();
      }
    });

    test('provider does not send a success report to the binder (failures only, §2.7)', async () => {
      const type = uniq('quiet-');
      provide(provider, type, () => {});
      await ready(a, provider, raw);
      const binderRaw = await RawClient.connect(engine.workerUrl);
      try {
        const id = randomUUID();
        const since = binderRaw.mark();
        await binderRaw.send({ type: 'registertrigger', id, trigger_type: type, function_id: 'x::y', config: {} });
        const reports = await binderRaw.collect((m) => m.type === 'triggerregistrationresult', 500, since);
        assert.deepEqual(reports, []);
      } finally {
        await binderRaw.close();
      }
    });

    test('unbinding and binder disconnect reach the provider as unregistertrigger (§5.2, §8.1, §11.21)', async () => {
      // Provider is raw here so the engine's unregistertrigger frames are visible whatever the SDK
      // does with them (0.9.0/0.11.6 ignore them, §2.6).
      const type = uniq('watched-');
      const providerRaw = await RawClient.connect(engine.workerUrl);
      const b = workers.connect(engine.workerUrl, { name: uniq('short-lived-') });
      try {
        await providerRaw.send({ type: 'registertriggertype', id: type, description: 'raw provider' });
        await providerRaw.ping();
        const fnId = `${uniq('watched')}::fn`;
        a.fn(b, fnId, async () => 1);
        const since = providerRaw.mark();
        const t1 = b.registerTrigger({ type, function_id: fnId, config: { n: 1 } });
        b.registerTrigger({ type, function_id: fnId, config: { n: 2 } });
        await ready(a, b, raw);
        const reg1 = await providerRaw.next(
          (m) => m.type === 'registertrigger' && m.trigger_type === type && m.config?.n === 1,
          { since, what: 'registertrigger n=1' },
        );
        const reg2 = await providerRaw.next(
          (m) => m.type === 'registertrigger' && m.trigger_type === type && m.config?.n === 2,
          { since, what: 'registertrigger n=2' },
        );
        assert.equal(reg1.function_id, fnId);
        assert.ok(isUuid(reg1.id));
        assert.equal(reg1.message_type, undefined, 'engine sends no message_type');

        t1.unregister();
        const un1 = await providerRaw.next((m) => m.type === 'unregistertrigger' && m.id === reg1.id, {
          since,
          what: 'unregistertrigger after unregister()',
        });
        assert.equal(un1.trigger_type, type);

        await workers.shutdown(b);
        const un2 = await providerRaw.next((m) => m.type === 'unregistertrigger' && m.id === reg2.id, {
          since,
          what: 'unregistertrigger after the binder disconnected',
        });
        assert.equal(un2.trigger_type, type);
      } finally {
        await providerRaw.close();
        await workers.shutdown(b).catch(() => {});
      }
    });

    if (a.handlesUnregisterTrigger) {
      test('0.22.1 provider callback sees unregisterTrigger; binder prints the failure report', async () => {
        const type = uniq('both-');
        const unregistered = new Recorder();
        const delivered = new Recorder();
        provide(provider, type, (t) => delivered.push(t), (t) => unregistered.push(t));
        await ready(a, provider, raw);
        const fnId = `${uniq('both')}::fn`;
        a.fn(binder, fnId, async () => 1);
        const handle = binder.registerTrigger({ type, function_id: fnId, config: {} });
        const t = await waitFor(() => delivered.calls[0], 3000, { message: 'delivered' });
        handle.unregister();
        const u = await waitFor(() => unregistered.calls[0], 3000, { message: 'provider unregisterTrigger called' });
        assert.equal(u.id, t.id);

        const failing = uniq('fails-');
        provide(provider, failing, () => {
          throw new Error('refused by provider');
        });
        await ready(a, provider, raw);
        const printed = [];
        const original = console.error;
        console.error = (...args) => printed.push(args.join(' '));
        try {
          binder.registerTrigger({ type: failing, function_id: fnId, config: {} });
          await waitFor(() => printed.find((l) => l.includes('refused by provider')), 3000, {
            message: 'binder SDK printed the triggerregistrationresult error',
          });
        } finally {
          console.error = original;
        }
      });
    }
  });
}
