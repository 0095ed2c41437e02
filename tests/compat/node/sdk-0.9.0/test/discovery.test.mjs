// SDK 0.9.0 discovery helpers (protocol.md §4.3, §11.37) and registerService (§2.12, §11.36).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import * as a from '../adapter.mjs';
import { RawClient, isUuid, startEngine, uniq, waitFor } from '../../lib/harness.mjs';
import { Workers, ready } from '../../lib/common.mjs';
import { serviceSuite } from '../../lib/suites/service.mjs';

describe('discovery helpers of iii-sdk 0.9.0', () => {
  let engine;
  let raw;
  let workers;
  let w;
  const p = uniq('disc');
  const name = uniq('discoverer-');

  before(async () => {
    engine = await startEngine();
    raw = await RawClient.connect(engine.workerUrl);
    workers = new Workers(a);
    w = workers.connect(engine.workerUrl, { name });
    a.fn(w, `${p}::listed`, async () => 'ok', { description: 'a listed function' });
    w.registerTrigger({ type: 'http', function_id: `${p}::listed`, config: { api_path: `/${p}`, http_method: 'GET' } });
    await ready(a, w, raw);
  });

  after(async () => {
    await workers?.shutdownAll();
    await raw?.close();
    await engine?.dispose();
  });

  test('listFunctions() returns the worker functions with function_id and description', async () => {
    const functions = await w.listFunctions();
    assert.ok(Array.isArray(functions), `array, got ${JSON.stringify(functions)}`);
    const mine = functions.find((f) => f.function_id === `${p}::listed`);
    assert.ok(mine, `${p}::listed in ${JSON.stringify(functions.map((f) => f.function_id))}`);
    assert.equal(mine.description, 'a listed function');
    assert.equal(mine.worker_name, name);
  });

  test('listWorkers() shows this worker with name, runtime and version', async () => {
    const list = await w.listWorkers();
    assert.ok(Array.isArray(list));
    const me = list.filter((x) => x.name === name);
    assert.equal(me.length, 1, `one worker named ${name}`);
    assert.equal(me[0].runtime, 'node');
    assert.equal(me[0].version, '0.9.0');
    assert.equal(me[0].id, w.workerId);
  });

  test('listTriggers(true) returns registered triggers with id, trigger_type, function_id, config', async () => {
    const triggers = await waitFor(
      async () => {
        const mine = (await w.listTriggers(true)).filter((t) => t.function_id === `${p}::listed`);
        return mine.length > 0 ? mine : false;
      },
      3000,
      { message: 'trigger listed' },
    );
    assert.equal(triggers.length, 1);
    assert.ok(isUuid(triggers[0].id));
    assert.equal(triggers[0].trigger_type, 'http');
    assert.deepEqual(triggers[0].config, { api_path: `/${p}`, http_method: 'GET' });
  });
});

serviceSuite(a);
