// registerService from the seed-era SDKs (protocol.md §2.12, §12.3, §11.36).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { RawClient, listWorkers, sleep, startEngine, uniq } from '../harness.mjs';
import { Workers, ready } from '../common.mjs';

export function serviceSuite(a) {
  describe(`registerService with iii-sdk ${a.gen}`, () => {
    let engine;
    let raw;
    let workers;

    before(async () => {
      engine = await startEngine();
      raw = await RawClient.connect(engine.workerUrl);
      workers = new Workers(a);
    });

    after(async () => {
      await workers?.shutdownAll();
      await raw?.close();
      await engine?.dispose();
    });

    test('registerService causes no error and no disconnect', async () => {
      const p = uniq('svc');
      const w = workers.connect(engine.workerUrl);
      a.fn(w, `${p}::one`, async () => 1);
      await ready(a, w, raw);
      const idBefore = w.workerId;
      assert.equal(typeof idBefore, 'string');

      w.registerService({ id: `${p}-svc`, description: 'a service' });
      w.registerService({ id: `${p}-child`, name: 'child', parent_service_id: `${p}-svc` });
      a.fn(w, `${p}::two`, async () => 2);
      await ready(a, w, raw);
      await sleep(300);

      assert.equal(w.workerId, idBefore, 'the SDK did not have to reconnect');
      assert.equal(await raw.call(`${p}::one`, null), 1);
      assert.equal(await raw.call(`${p}::two`, null), 2);
      assert.ok((await listWorkers(raw)).some((x) => x.id === idBefore), 'same connection still listed');
    });
  });
}
